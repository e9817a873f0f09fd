// Every threshold, duration, selector, severity and link of the worker alerts.
//
// Override from your own file without forking, e.g. my-alerts.libsonnet:
//
//   {
//     _config+:: {
//       runbookUrlBase: 'https://git.example.com/ops/worker-monitoring/-/blob/main/docs/runbooks',
//       alerts+: { HighJobFailureRate+: { threshold: 0.2, 'for': '10m' } },
//     },
//   }
//
// and render with `python -m alerts.render --config my-alerts.libsonnet`.
// Durations are Prometheus durations in whole seconds or minutes ('15s', '1m', '10m').
{
  _config+:: {
    // Selects the worker replicas' series in every rule. Must be a set of equality
    // matchers: WorkerDown's absent() takes its labels from them.
    workerSelector: 'job="worker"',

    // Links put in every alert's annotations. runbook_url = <runbookUrlBase>/<AlertName>.md
    runbookUrlBase: 'https://github.com/example/worker-monitoring/blob/main/docs/runbooks',
    // dashboard_url = <grafanaUrlBase>/d/<dashboardUid>/<dashboardSlug>?viewPanel=<panelId>
    // The dashboards reuse dashboardUid and each alert's panelId, so the link opens the
    // panel that shows the alert's signal.
    grafanaUrlBase: 'http://localhost:3000',
    dashboardUid: 'worker-overview',
    dashboardSlug: 'worker-overview',

    // Quantiles of attempt duration recorded for the dashboards; HighJobProcessingTime's
    // quantile must be one of them.
    durationQuantiles: [0.5, 0.95, 0.99],

    // One entry per alert. 'for' is how long the condition must hold before the alert fires.
    alerts: {
      // WorkerDown: a worker scrape target is down (up == 0), or no worker target exists.
      WorkerDown: {
        severity: 'critical',
        'for': '1m',
        panelId: 1,
      },
      // HighJobFailureRate: failed / started attempts of one (queue, job_type) over `window`
      // above `threshold`, only while at least `minStartedPerSecond` attempts/s are started
      // (1 failure out of 1 attempt is not a 100 % failure rate worth waking anyone for).
      HighJobFailureRate: {
        severity: 'warning',
        'for': '5m',
        window: '5m',
        threshold: 0.10,
        minStartedPerSecond: 0.05,
        panelId: 2,
      },
      // RedisDisconnected: a replica reports worker_redis_connection_status 0.
      RedisDisconnected: {
        severity: 'critical',
        'for': '1m',
        panelId: 3,
      },
      // HighJobProcessingTime: the `quantile` of attempt duration of one (queue, job_type)
      // over `window` above `thresholdSeconds`.
      HighJobProcessingTime: {
        severity: 'warning',
        'for': '10m',
        window: '10m',
        quantile: 0.95,
        thresholdSeconds: 30,
        panelId: 4,
      },
      // HighJobProcessingQueue: a queue holds more than `threshold` ready messages (max
      // across replicas: every replica reports the same broker).
      HighJobProcessingQueue: {
        severity: 'warning',
        'for': '10m',
        threshold: 1000,
        panelId: 5,
      },
      // HighRedisReconnectAttempts: a replica made more than `threshold` reconnect attempts
      // in `window`. Fires at once: a reconnect storm is already the sustained symptom.
      // Not while one of `explainedBy` fired for the same replica within `window`: an
      // outage already paged for must not echo as a storm once it ends. Short drops that
      // never last RedisDisconnected's `for` still count.
      HighRedisReconnectAttempts: {
        severity: 'warning',
        'for': '0m',
        window: '10m',
        threshold: 5,
        explainedBy: ['RedisDisconnected'],
        panelId: 6,
      },
      // LowWorkerThroughput: a queue completes fewer than `minCompletedPerSecond` jobs/s
      // over `window` while it holds at least `minReadyMessages` ready messages (an idle
      // queue with nothing to do is not slow). Not judged over a window in which one of
      // `explainedBy` fired: the outage that paged is what lowered it.
      LowWorkerThroughput: {
        severity: 'warning',
        'for': '15m',
        window: '10m',
        minCompletedPerSecond: 0.5,
        minReadyMessages: 100,
        explainedBy: ['WorkerDown', 'RedisDisconnected'],
        panelId: 7,
      },
    },

    // Service level objectives: what the senders of jobs feel (alerts/slo.libsonnet).
    // Each SLO holds for every queue; `queues` overrides it for named ones, e.g.
    //   slo+: { queueWait+: { queues+: { critical: { objective: 0.999 } } } }
    // Every queue-wait threshold must be a bucket edge of worker_job_queue_wait_seconds
    // (QUEUE_WAIT_BUCKETS in worker/metrics.py), or its SLI cannot be read.
    slo: {
      // The period the objectives and the error budget are counted over.
      window: '28d',
      // The error ratios over `longWindow` or more, and over `window` (and the budget left,
      // which reads it), are evaluated every `longWindowInterval` in a group of their own,
      // worker-slo-records-long, as Pyrra and the SRE workbook do: a ratio over a day
      // moves little in a few minutes, and each evaluation reads days of raw samples (at
      // the global 15 s they were most of the rules' cost, live and in `stack backtest`).
      // An alert reading one of them (the tickets) may fire up to this much later. At most
      // half of Prometheus' 5m lookback delta, so that a group that misses an evaluation
      // (Prometheus skips one that overruns) still leaves its records readable.
      longWindow: '1d',
      longWindowInterval: '2m30s',
      // Share of attempts that start within `thresholdSeconds` of becoming runnable.
      queueWait: {
        objective: 0.99,
        thresholdSeconds: 60,
        queues: { default: { thresholdSeconds: 300 } },
      },
      // Share of jobs reaching a final outcome that complete: the error ratio is
      // dead-lettered / (completed + dead-lettered).
      success: {
        objective: 0.995,
        queues: {},
      },
      // The SRE workbook's multiwindow, multi-burn-rate alerts: an alert of `severity`
      // fires while the budget burns faster than `factor` times the rate that spends it
      // exactly over `window`, over both the `long` and the `short` window (the short one
      // makes it reset soon after the burn stops). Burn rate = error ratio / (1 - objective).
      burnRates: [
        { severity: 'critical', long: '1h', short: '5m', factor: 14.4 },
        { severity: 'critical', long: '6h', short: '30m', factor: 6 },
        { severity: 'warning', long: '1d', short: '2h', factor: 3 },
        { severity: 'warning', long: '3d', short: '6h', factor: 1 },
      ],
      alerts: {
        // JobQueueWaitBudgetBurn, JobSuccessBudgetBurn: one alert per queue and severity
        // of burnRates, firing at once (`for`): the two windows already ask for a burn
        // that lasts.
        JobQueueWaitBudgetBurn: { 'for': '0m', panelId: 30 },
        JobSuccessBudgetBurn: { 'for': '0m', panelId: 31 },
        // HighJobQueueLatency: the oldest ready message of a queue has waited more than
        // `thresholdSeconds` for `for` (max across replicas). Nothing starts at all, so
        // the queue-wait SLO, which counts attempts as they start, cannot see it.
        HighJobQueueLatency: {
          severity: 'warning',
          'for': '5m',
          thresholdSeconds: 120,
          queues: { default: { thresholdSeconds: 600 } },
          panelId: 32,
        },
      },
    },
  },
}

// The alerting pipeline's own alerts (alerts/pipeline.libsonnet), named as in the upstream
// prometheus and alertmanager mixins, and WorkerReplicasMissing. Override like the others:
//   { _config+:: { pipelineAlerts+: { WorkerReplicasMissing+: { minReplicas: 4 } } } }
+ {
  _config+:: {
    // Prometheus' scrape of itself and of every Alertmanager (prometheus/prometheus.yml).
    prometheusSelector: 'job="prometheus"',
    alertmanagerSelector: 'job="alertmanager"',
    // Where these alerts' dashboard_url points: the page of the component at fault.
    prometheusUrlBase: 'http://localhost:9090',
    alertmanagerUrlBase: 'http://localhost:9093',

    pipelineAlerts: {
      // Watchdog: always firing, routed only to the receiver `deadman`, an external dead
      // man's switch that raises the alarm when it stops arriving (docs/running.md).
      Watchdog: { severity: 'none' },
      // WorkerReplicasMissing: fewer than `minReplicas` (the deployment's replica count)
      // worker targets up, but at least one: none up is WorkerDown's page, which inhibits
      // this one. With dns_sd_configs a cleanly removed replica leaves DNS and `up`
      // forgets it, so WorkerDown cannot see it.
      WorkerReplicasMissing: { severity: 'warning', 'for': '5m', minReplicas: 2 },
      // PrometheusRuleFailures: rule evaluations failed within `window`: some alert or
      // record is not computed, so an alert may stay silent.
      PrometheusRuleFailures: { severity: 'critical', 'for': '5m', window: '5m' },
      // PrometheusErrorSendingAlertsToAnyAlertmanager: more than `threshold` of the alerts
      // sent over `window` failed, on every Alertmanager (the lowest ratio among them). The
      // Watchdog keeps alerts flowing, so there is always a send to fail.
      PrometheusErrorSendingAlertsToAnyAlertmanager: {
        severity: 'critical',
        'for': '5m',
        window: '5m',
        threshold: 0.03,
      },
      // PrometheusNotConnectedToAlertmanagers: no Alertmanager discovered during `window`.
      PrometheusNotConnectedToAlertmanagers: { severity: 'warning', 'for': '10m', window: '5m' },
      // PrometheusBadConfig: the last configuration reload failed (throughout `window`).
      PrometheusBadConfig: { severity: 'critical', 'for': '10m', window: '5m' },
      // AlertmanagerFailedToSendAlerts: more than `threshold` of one integration's
      // notifications failed over `window`.
      AlertmanagerFailedToSendAlerts: {
        severity: 'warning',
        'for': '5m',
        window: '5m',
        threshold: 0.01,
      },
      // AlertmanagerFailedReload: the last configuration reload failed (throughout `window`).
      AlertmanagerFailedReload: { severity: 'critical', 'for': '10m', window: '5m' },
      // AlertmanagerClusterDown: at least `threshold` of the cluster's members were up less
      // than half of `window` (with two members: one missing).
      AlertmanagerClusterDown: { severity: 'critical', 'for': '5m', window: '5m', threshold: 0.5 },
    },
  },
}
