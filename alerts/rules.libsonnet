// Recording rules, named level:metric:operation. The alerts and the dashboards query
// these instead of the raw series, so each expensive aggregation runs once per evaluation.
// The window in a name comes from the config of the alert that reads the record.
{
  local c = $._config,
  local a = c.alerts,
  local sel = c.workerSelector,
  local num = (import 'lib.libsonnet').num,
  local failureWindow = a.HighJobFailureRate.window,
  local throughputWindow = a.LowWorkerThroughput.window,
  local durationWindow = a.HighJobProcessingTime.window,
  local reconnectWindow = a.HighRedisReconnectAttempts.window,

  // Record names, for alerts.libsonnet and for anyone who reads the rendered config.
  _records:: {
    started: 'queue_job_type:worker_jobs:rate' + failureWindow,
    completed: 'queue_job_type:worker_jobs_completed:rate' + failureWindow,
    failed: 'queue_job_type:worker_jobs_failed:rate' + failureWindow,
    retried: 'queue_job_type:worker_jobs_retried:rate' + failureWindow,
    deadLettered: 'queue_job_type:worker_jobs_dead_lettered:rate' + failureWindow,
    failureRatio: 'queue_job_type:worker_jobs_failed_per_started:ratio_rate' + failureWindow,
    queueCompleted: 'queue:worker_jobs_completed:rate' + throughputWindow,
    queueMessages: 'queue_state:worker_queue_messages:max',
    durationBuckets: 'queue_job_type_le:worker_job_duration_seconds_bucket:rate' + durationWindow,
    durationQuantile: 'queue_job_type:worker_job_duration_seconds:quantile_rate' + durationWindow,
    reconnects: 'instance:worker_redis_reconnect_attempts:increase' + reconnectWindow,
    processing: 'queue_job_type:worker_jobs_processing:sum',
    concurrency: 'job:worker_concurrency:sum',
  },

  local r = self._records,
  local perJobType(record, counter, window) = {
    record: record,
    expr: 'sum by (queue, job_type) (rate(%s{%s}[%s]))' % [counter, sel, window],
  },

  assert std.member(c.durationQuantiles, a.HighJobProcessingTime.quantile) :
         'HighJobProcessingTime.quantile must be one of durationQuantiles',

  prometheusRules+:: {
    groups+: [
      {
        name: 'worker-records',
        rules: [
          perJobType(r.started, 'worker_jobs_total', failureWindow),
          perJobType(r.completed, 'worker_jobs_completed_total', failureWindow),
          perJobType(r.failed, 'worker_jobs_failed_total', failureWindow),
          perJobType(r.retried, 'worker_jobs_retried_total', failureWindow),
          perJobType(r.deadLettered, 'worker_jobs_dead_lettered_total', failureWindow),
          {
            // NaN when nothing started: HighJobFailureRate's volume guard decides then.
            record: r.failureRatio,
            expr: '%s / %s' % [r.failed, r.started],
          },
          {
            record: r.queueCompleted,
            expr: 'sum by (queue) (rate(worker_jobs_completed_total{%s}[%s]))'
                  % [sel, throughputWindow],
          },
          {
            // Every replica samples the same broker: max, never sum, across replicas.
            record: r.queueMessages,
            expr: 'max by (queue, state) (worker_queue_messages{%s})' % sel,
          },
          {
            record: r.durationBuckets,
            expr: 'sum by (queue, job_type, le) (rate(worker_job_duration_seconds_bucket{%s}[%s]))'
                  % [sel, durationWindow],
          },
        ] + [
          {
            record: r.durationQuantile,
            expr: 'histogram_quantile(%s, %s)' % [num(q), r.durationBuckets],
            labels: { quantile: num(q) },
          }
          for q in c.durationQuantiles
        ] + [
          {
            // Attempts made in the window, exactly: max - min of the counter, which never
            // reports more attempts than happened. increase() extrapolates to the window's
            // edges (5 attempts read as 5.1 to 6), which would break a "more than 5" threshold.
            // Across a counter reset (replica restart) max - min is meaningless; increase()
            // handles resets, so it takes over for those series.
            record: r.reconnects,
            expr: |||
              (
                (
                  max_over_time(worker_redis_reconnect_attempts_total{%(sel)s}[%(w)s])
                  - min_over_time(worker_redis_reconnect_attempts_total{%(sel)s}[%(w)s])
                )
                unless
                resets(worker_redis_reconnect_attempts_total{%(sel)s}[%(w)s]) > 0
              )
              or
              increase(worker_redis_reconnect_attempts_total{%(sel)s}[%(w)s])
            ||| % { sel: sel, w: reconnectWindow },
          },
          {
            record: r.processing,
            expr: 'sum by (queue, job_type) (worker_jobs_processing{%s})' % sel,
          },
          {
            record: r.concurrency,
            expr: 'sum by (job) (worker_concurrency{%s})' % sel,
          },
        ],
      },
    ],
  },
}
