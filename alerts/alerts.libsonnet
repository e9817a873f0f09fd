// The seven worker alerts. Thresholds, durations and links come from config.libsonnet;
// the queries read the recording rules of rules.libsonnet.
{
  local c = $._config,
  local a = c.alerts,
  local r = $._records,
  local sel = c.workerSelector,

  local lib = import 'lib.libsonnet',
  local num = lib.num,
  local pct = lib.pct,

  // Every worker alert links to its panel, filtered by `linkVars` (labels of the alert).
  local alert(name, expr, summary, description, value, linkVars=[]) =
    local url = lib.panelUrl(c, a[name].panelId, linkVars);
    lib.alert(c, name, a[name], expr, summary, description, value, url),

  // `expr` dropped while one of `names` fired (for the same `on` labels) within `window`.
  // An outage that paged leaves its trace in counters and rates for a whole window after it
  // ends, when the inhibition that muted its symptoms has ended too: without this guard
  // those symptoms reach the chat as echoes of an incident already handled. ALERTS is
  // Prometheus' own record of what fired, as in the kubernetes-mixin's InfoInhibitor.
  local unlessFired(expr, names, on, window) =
    if std.length(names) == 0 then expr
    else |||
      %(expr)s
      unless on (%(on)s)
      max_over_time(ALERTS{alertname=~"%(names)s", alertstate="firing", %(sel)s}[%(window)s])
    ||| % {
      expr: std.rstripChars(expr, '\n'),
      on: std.join(', ', on),
      names: std.join('|', names),
      sel: sel,
      window: window,
    },

  prometheusAlerts+:: {
    groups+: [
      {
        name: 'worker-alerts',
        rules: [
          // Liveness comes from Prometheus' own scrape, never from a gauge the worker
          // reports about itself: a dead worker reports nothing. up == 0 cannot fire when
          // there is no target at all (every replica gone, or service discovery finding
          // none): absent() covers that case, with only the selector's labels.
          alert(
            'WorkerDown',
            'up{%s} == 0 or absent(up{%s})' % [sel, sel],
            '{{ if $labels.instance }}Worker replica {{ $labels.instance }} down'
            + '{{ else }}No worker replica found{{ end }} for more than %s' % a.WorkerDown['for'],
            '{{ if $labels.instance }}Prometheus has failed to scrape worker replica '
            + '{{ $labels.instance }} (job {{ $labels.job }}) for more than %s: ' % a.WorkerDown['for']
            + 'the replica is stopped, crashed, hung or unreachable (up = {{ $value }}).'
            + '{{ else }}Prometheus has had no scrape target matching {%s} for more than %s: ' % [
              sel,
              a.WorkerDown['for'],
            ]
            + 'no worker replica runs, or service discovery finds none. No job is processed.'
            + '{{ end }}',
            '{{ if $labels.instance }}up = {{ $value }}{{ else }}0 targets{{ end }}',
            ['instance'],
          ),
          alert(
            'HighJobFailureRate',
            |||
              %(ratio)s > %(threshold)s
              and on (queue, job_type)
              %(started)s >= %(minStarted)s
            ||| % {
              ratio: r.failureRatio,
              started: r.started,
              threshold: num(a.HighJobFailureRate.threshold),
              minStarted: num(a.HighJobFailureRate.minStartedPerSecond),
            },
            'More than %s of %s attempts fail on queue %s' % [
              pct(a.HighJobFailureRate.threshold),
              '{{ $labels.job_type }}',
              '{{ $labels.queue }}',
            ],
            '{{ $value | humanizePercentage }} of the {{ $labels.job_type }} attempts started '
            + 'on queue {{ $labels.queue }} over the last %s failed (threshold %s; ' % [
              a.HighJobFailureRate.window,
              pct(a.HighJobFailureRate.threshold),
            ]
            + 'checked only while at least %s attempts/s are started).'
              % num(a.HighJobFailureRate.minStartedPerSecond),
            '{{ $value | humanizePercentage }} failed',
            ['queue', 'job_type'],
          ),
          alert(
            'RedisDisconnected',
            'min by (job, instance) (worker_redis_connection_status{%s}) == 0' % sel,
            'Worker replica {{ $labels.instance }} disconnected from Redis for more than %s'
            % a.RedisDisconnected['for'],
            'Worker replica {{ $labels.instance }} (job {{ $labels.job }}) has reported '
            + 'worker_redis_connection_status {{ $value }} for more than %s: ' % a.RedisDisconnected['for']
            + 'its Redis health probe fails, so it can neither fetch nor acknowledge jobs.',
            'connection status {{ $value }}',
            ['instance'],
          ),
          alert(
            'HighJobProcessingTime',
            '%s{quantile="%s"} > %s' % [
              r.durationQuantile,
              num(a.HighJobProcessingTime.quantile),
              num(a.HighJobProcessingTime.thresholdSeconds),
            ],
            'p%s of %s attempt duration on queue %s above %ss' % [
              num(a.HighJobProcessingTime.quantile * 100),
              '{{ $labels.job_type }}',
              '{{ $labels.queue }}',
              num(a.HighJobProcessingTime.thresholdSeconds),
            ],
            'The %sth percentile of {{ $labels.job_type }} attempt duration on queue ' % (
              num(a.HighJobProcessingTime.quantile * 100)
            )
            + '{{ $labels.queue }} over the last %s is {{ $value | humanizeDuration }} ' % (
              a.HighJobProcessingTime.window
            )
            + '(threshold %ss).' % num(a.HighJobProcessingTime.thresholdSeconds),
            'p%s {{ $value | humanizeDuration }}' % num(a.HighJobProcessingTime.quantile * 100),
            ['queue', 'job_type'],
          ),
          alert(
            'HighJobProcessingQueue',
            '%s{state="ready"} > %s' % [r.queueMessages, num(a.HighJobProcessingQueue.threshold)],
            'More than %s ready messages in queue {{ $labels.queue }}'
            % num(a.HighJobProcessingQueue.threshold),
            'Queue {{ $labels.queue }} has held more than %s ready messages for more than %s '
            % [num(a.HighJobProcessingQueue.threshold), a.HighJobProcessingQueue['for']]
            + '(now {{ $value | printf "%.0f" }}, max across replicas): '
            + 'jobs arrive faster than the workers finish them.',
            '{{ $value | printf "%.0f" }} ready',
            ['queue'],
          ),
          alert(
            'HighRedisReconnectAttempts',
            unlessFired(
              '%s > %s' % [r.reconnects, num(a.HighRedisReconnectAttempts.threshold)],
              a.HighRedisReconnectAttempts.explainedBy,
              ['job', 'instance'],
              a.HighRedisReconnectAttempts.window,
            ),
            'Worker replica {{ $labels.instance }} made more than %s Redis reconnect attempts in %s'
            % [num(a.HighRedisReconnectAttempts.threshold), a.HighRedisReconnectAttempts.window],
            'Worker replica {{ $labels.instance }} (job {{ $labels.job }}) made '
            + '{{ $value | printf "%.0f" }} attempts to reconnect to Redis over the last '
            + '%s (threshold %s): its connection keeps dropping.' % [
              a.HighRedisReconnectAttempts.window,
              num(a.HighRedisReconnectAttempts.threshold),
            ],
            '{{ $value | printf "%.0f" }} reconnect attempts',
            ['instance'],
          ),
          // Per queue: the queue that holds the work must be the one that moves. A queue
          // whose jobs never completed has no completion series at all, so its throughput
          // is taken as 0 from the backlog series instead of silently missing.
          alert(
            'LowWorkerThroughput',
            unlessFired(
              |||
                (
                  %(completed)s
                  or on (queue)
                  0 * max without (state) (%(messages)s{state="ready"})
                ) < %(minCompleted)s
                and on (queue)
                %(messages)s{state="ready"} >= %(minReady)s
              ||| % {
                completed: r.queueCompleted,
                messages: r.queueMessages,
                minCompleted: num(a.LowWorkerThroughput.minCompletedPerSecond),
                minReady: num(a.LowWorkerThroughput.minReadyMessages),
              },
              a.LowWorkerThroughput.explainedBy,
              [],
              a.LowWorkerThroughput.window,
            ),
            'Queue {{ $labels.queue }} completes fewer than %s jobs/s while work is waiting'
            % num(a.LowWorkerThroughput.minCompletedPerSecond),
            'Queue {{ $labels.queue }} completed {{ $value | printf "%.2f" }} jobs/s over '
            + 'the last %s while holding at least %s ready messages (threshold %s jobs/s).' % [
              a.LowWorkerThroughput.window,
              num(a.LowWorkerThroughput.minReadyMessages),
              num(a.LowWorkerThroughput.minCompletedPerSecond),
            ],
            '{{ $value | printf "%.2f" }} jobs/s',
            ['queue'],
          ),
        ],
      },
    ],
  },
}
