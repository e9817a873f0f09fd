// Alerts on the alerting pipeline itself: the Watchdog that proves it delivers, and the
// faults of Prometheus and Alertmanager that would silence every other alert. Names and
// semantics are those of the upstream prometheus and alertmanager mixins, so an operator
// who knows them knows these; thresholds and durations come from config.libsonnet
// (`pipelineAlerts`). WorkerReplicasMissing lives here too: it watches the scrape targets,
// not a worker's own metrics.
{
  local c = $._config,
  local a = c.pipelineAlerts,
  local lib = import 'lib.libsonnet',
  local num = lib.num,
  local pct = lib.pct,
  local prom = c.prometheusSelector,
  local am = c.alertmanagerSelector,

  // `link` is the page of the component at fault.
  local alert(name, expr, summary, description, value, link) =
    lib.alert(c, name, a[name], expr, summary, description, value, link),

  prometheusAlerts+:: {
    groups+: [
      {
        name: 'alerting-pipeline',
        rules: [
          alert(
            'Watchdog',
            'vector(1)',
            'The alerting pipeline delivers: this alert always fires',
            "Watchdog always fires and is routed only to the receiver deadman, a dead man's "
            + 'switch outside this stack. When it stops arriving there, Prometheus, every '
            + 'Alertmanager, or the path from them to the outside is down, and no other '
            + 'alert can reach anyone.',
            'always firing',
            '%s/#/alerts?filter=%%7Balertname%%3D%%22Watchdog%%22%%7D' % c.alertmanagerUrlBase,
          ),
          alert(
            'WorkerReplicasMissing',
            // `max without (replica)`: one target counts once where both members of a
            // Prometheus pair wrote its `up` (a long-term store's ruler); a no-op on a
            // member's own series, which carry no `replica`.
            'count by (job) (max without (replica) (up{%s} == 1)) < %s'
            % [c.workerSelector, num(a.WorkerReplicasMissing.minReplicas)],
            'Fewer than %s worker replicas up for more than %s' % [
              num(a.WorkerReplicasMissing.minReplicas),
              a.WorkerReplicasMissing['for'],
            ],
            'Prometheus has scraped {{ $value }} worker replicas (job {{ $labels.job }}) '
            + 'successfully for more than %s, fewer than the %s the fleet runs: '
              % [a.WorkerReplicasMissing['for'], num(a.WorkerReplicasMissing.minReplicas)]
            + 'a replica was removed, failed to start, or is down. The rest carry the load '
            + 'with less capacity and no redundancy.',
            '{{ $value }} of %s up' % num(a.WorkerReplicasMissing.minReplicas),
            '%s/targets?search=%s' % [c.prometheusUrlBase, c.workerSelector],
          ),
          alert(
            'PrometheusRuleFailures',
            'increase(prometheus_rule_evaluation_failures_total{%s}[%s]) > 0'
            % [prom, a.PrometheusRuleFailures.window],
            'Prometheus {{ $labels.instance }} fails to evaluate rules of group '
            + '{{ $labels.rule_group }}',
            'Prometheus {{ $labels.instance }} failed {{ $value | printf "%.0f" }} rule '
            + 'evaluations of group {{ $labels.rule_group }} over the last %s: ' % (
              a.PrometheusRuleFailures.window
            )
            + 'the alerts and records of that group are not computed, so an alert may '
            + 'stay silent while its fault is real.',
            '{{ $value | printf "%.0f" }} failed evaluations',
            '%s/rules' % c.prometheusUrlBase,
          ),
          alert(
            'PrometheusErrorSendingAlertsToAnyAlertmanager',
            |||
              min without (alertmanager) (
                rate(prometheus_notifications_errors_total{%(prom)s, alertmanager!~``}[%(w)s])
                /
                rate(prometheus_notifications_sent_total{%(prom)s, alertmanager!~``}[%(w)s])
              )
              > %(threshold)s
            ||| % {
              prom: prom,
              w: a.PrometheusErrorSendingAlertsToAnyAlertmanager.window,
              threshold: num(a.PrometheusErrorSendingAlertsToAnyAlertmanager.threshold),
            },
            'Prometheus {{ $labels.instance }} fails to send alerts to every Alertmanager',
            '{{ $value | humanizePercentage }} of the alerts Prometheus {{ $labels.instance }} '
            + 'sent over the last %s failed on even its best Alertmanager (threshold %s): ' % [
              a.PrometheusErrorSendingAlertsToAnyAlertmanager.window,
              pct(a.PrometheusErrorSendingAlertsToAnyAlertmanager.threshold),
            ]
            + "no alert reaches anyone. This one cannot either; the dead man's switch "
            + 'reports the silence.',
            '{{ $value | humanizePercentage }} of sends failed',
            '%s/status' % c.prometheusUrlBase,
          ),
          alert(
            'PrometheusNotConnectedToAlertmanagers',
            'max_over_time(prometheus_notifications_alertmanagers_discovered{%s}[%s]) < 1'
            % [prom, a.PrometheusNotConnectedToAlertmanagers.window],
            'Prometheus {{ $labels.instance }} has no Alertmanager to send alerts to',
            'Prometheus {{ $labels.instance }} has discovered {{ $value }} Alertmanagers '
            + 'throughout the last %s: its alerts go nowhere. ' % (
              a.PrometheusNotConnectedToAlertmanagers.window
            )
            + 'Check the alerting section of prometheus.yml and its service discovery.',
            '{{ $value }} Alertmanagers',
            '%s/status' % c.prometheusUrlBase,
          ),
          alert(
            'PrometheusBadConfig',
            'max_over_time(prometheus_config_last_reload_successful{%s}[%s]) == 0'
            % [prom, a.PrometheusBadConfig.window],
            'Prometheus {{ $labels.instance }} failed to reload its configuration',
            'The last configuration reload of Prometheus {{ $labels.instance }} failed and '
            + 'has not succeeded since (last_reload_successful = {{ $value }} throughout the '
            + 'last %s): it runs with the previous configuration, and will not start ' % (
              a.PrometheusBadConfig.window
            )
            + 'again with this one.',
            'last reload failed',
            '%s/config' % c.prometheusUrlBase,
          ),
          alert(
            'AlertmanagerFailedToSendAlerts',
            |||
              rate(alertmanager_notifications_failed_total{%(am)s}[%(w)s])
              / ignoring (reason) group_left
              rate(alertmanager_notifications_total{%(am)s}[%(w)s])
              > %(threshold)s
            ||| % {
              am: am,
              w: a.AlertmanagerFailedToSendAlerts.window,
              threshold: num(a.AlertmanagerFailedToSendAlerts.threshold),
            },
            'Alertmanager {{ $labels.instance }} fails to send notifications to '
            + '{{ $labels.integration }}',
            '{{ $value | humanizePercentage }} of the notifications Alertmanager '
            + '{{ $labels.instance }} sent to {{ $labels.integration }} over the last %s ' % (
              a.AlertmanagerFailedToSendAlerts.window
            )
            + 'failed (threshold %s): the receiver behind that integration ' % (
              pct(a.AlertmanagerFailedToSendAlerts.threshold)
            )
            + 'misses alerts.',
            '{{ $value | humanizePercentage }} failed',
            '%s/#/status' % c.alertmanagerUrlBase,
          ),
          alert(
            'AlertmanagerFailedReload',
            'max_over_time(alertmanager_config_last_reload_successful{%s}[%s]) == 0'
            % [am, a.AlertmanagerFailedReload.window],
            'Alertmanager {{ $labels.instance }} failed to reload its configuration',
            'The last configuration reload of Alertmanager {{ $labels.instance }} failed and '
            + 'has not succeeded since (last_reload_successful = {{ $value }} throughout the '
            + 'last %s): it routes with the previous configuration, and will not ' % (
              a.AlertmanagerFailedReload.window
            )
            + 'start again with this one.',
            'last reload failed',
            '%s/#/status' % c.alertmanagerUrlBase,
          ),
          alert(
            'AlertmanagerClusterDown',
            |||
              (
                count by (job) (avg_over_time(up{%(am)s}[%(w)s]) < 0.5)
                /
                count by (job) (up{%(am)s})
              )
              >= %(threshold)s
            ||| % {
              am: am,
              w: a.AlertmanagerClusterDown.window,
              threshold: num(a.AlertmanagerClusterDown.threshold),
            },
            'Alertmanager cluster {{ $labels.job }} has lost half or more of its members',
            '{{ $value | humanizePercentage }} of the Alertmanagers of job {{ $labels.job }} '
            + 'were up less than half of the last %s: ' % a.AlertmanagerClusterDown.window
            + 'the cluster has lost its redundancy, and alerts are delivered only by the '
            + 'members left (none, if this alert is all you do not get).',
            '{{ $value | humanizePercentage }} down',
            '%s/targets?search=%s' % [c.prometheusUrlBase, am],
          ),
        ],
      },
    ],
  },
}
