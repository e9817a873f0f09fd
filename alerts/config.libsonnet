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
      HighRedisReconnectAttempts: {
        severity: 'warning',
        'for': '0m',
        window: '10m',
        threshold: 5,
        panelId: 6,
      },
      // LowWorkerThroughput: a queue completes fewer than `minCompletedPerSecond` jobs/s
      // over `window` while it holds at least `minReadyMessages` ready messages (an idle
      // queue with nothing to do is not slow).
      LowWorkerThroughput: {
        severity: 'warning',
        'for': '15m',
        window: '10m',
        minCompletedPerSecond: 0.5,
        minReadyMessages: 100,
        panelId: 7,
      },
    },
  },
}
