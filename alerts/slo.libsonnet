// Service level objectives on what the senders of jobs feel: how long a job waits before
// it starts, and whether it finally succeeds. Recording rules for each SLO's error ratio
// over every window the alerts read, its error budget per queue and what is left of it;
// the SRE workbook's multiwindow, multi-burn-rate alerts; and HighJobQueueLatency, the
// stall detector. Settings: _config.slo in config.libsonnet.
local lib = import 'lib.libsonnet';
local num = lib.num;
local pct = lib.pct;

// Seconds in a Prometheus duration ('5m', '1h', '28d', '2m30s', '2500ms').
local unitSeconds = { ms: 0.001, s: 1, m: 60, h: 3600, d: 86400, w: 604800 };
local seconds(d) =
  local c = std.stringChars(d);
  // Digits accumulate in n; a unit ('ms' read before 'm') adds n of it to the total.
  local walk(i, n, total) =
    if i == std.length(c) then total
    else if std.member('0123456789', c[i]) then walk(i + 1, n * 10 + std.parseInt(c[i]), total)
    else if c[i] == 'm' && i + 1 < std.length(c) && c[i + 1] == 's' then walk(i + 2, 0, total + n * unitSeconds.ms)
    else walk(i + 1, 0, total + n * unitSeconds[c[i]]);
  walk(0, 0, 0);
// 120 -> '2m', 3600 -> '1h', 45 -> '45s'
local human(t) =
  if t % 3600 == 0 then '%dh' % (t / 3600)
  else if t % 60 == 0 then '%dm' % (t / 60)
  else '%ss' % num(t);
local matchers(list) = std.join(', ', [m for m in list if m != '']);
// A bucket edge as exporters write it: prometheus_client writes 60 as "60.0", Go as "60".
local le(t) =
  if t == std.floor(t) then 'le=~"%s|%s[.]0"' % [num(t), num(t)] else 'le="%s"' % num(t);
// Queue names in a regex: Dramatiq's names may hold dots.
local quote(q) = std.strReplace(q, '.', '[.]');
// A record narrowed to some queues ('' for all).
local narrowed(record, match) = if match == '' then record else '%s{%s}' % [record, match];

{
  local c = $._config,
  local s = c.slo,
  local a = s.alerts,
  local sel = c.workerSelector,

  // Every window an alert reads, shortest first, then the SLO window (budget left).
  local windows = std.uniq(
    std.sort([b.long for b in s.burnRates] + [b.short for b in s.burnRates], seconds), seconds
  ) + [s.window],
  // The windows whose ratios are evaluated every longWindowInterval (config.libsonnet).
  local isLong(w) = w == s.window || seconds(w) >= seconds(s.longWindow),
  local severities = std.uniq([b.severity for b in s.burnRates]),

  // The queues an SLO's settings apply to: one entry per queue named in `queues`, then
  // every other queue with the defaults.
  local groups(conf, defaults) =
    local named = std.objectFields(conf.queues);
    [
      { match: 'queue="%s"' % q, conf: defaults + conf.queues[q], queues: 'queue %s' % q }
      for q in named
    ] + [{
      match: if named == [] then '' else 'queue!~"%s"' % std.join('|', std.map(quote, named)),
      conf: defaults,
      queues: if named == [] then 'every queue' else 'every other queue',
    }],

  local queueWaitDefaults = { objective: s.queueWait.objective, thresholdSeconds: s.queueWait.thresholdSeconds },
  local latency = a.HighJobQueueLatency,

  local slos = {
    queueWait: {
      alert: 'JobQueueWaitBudgetBurn',
      metric: 'worker_job_queue_wait_slo_errors',
      groups: groups(s.queueWait, queueWaitDefaults),
      present: 'worker_job_queue_wait_seconds_count',
      promise(conf): '%s of attempts start within %s of becoming runnable' % [
        pct(conf.objective),
        human(conf.thresholdSeconds),
      ],
      // Attempts that waited longer than the threshold, per attempt started.
      ratio(m, conf, w): |||
        (
          sum by (queue) (rate(worker_job_queue_wait_seconds_count{%(m)s}[%(w)s]))
          -
          sum by (queue) (rate(worker_job_queue_wait_seconds_bucket{%(le)s}[%(w)s]))
        )
        /
        sum by (queue) (rate(worker_job_queue_wait_seconds_count{%(m)s}[%(w)s]))
      ||| % { m: m, w: w, le: matchers([m, le(conf.thresholdSeconds)]) },
    },
    success: {
      alert: 'JobSuccessBudgetBurn',
      metric: 'worker_jobs_dead_lettered_per_final',
      groups: groups(s.success, { objective: s.success.objective }),
      present: 'worker_jobs_completed_total',
      promise(conf): '%s of jobs complete rather than being dead-lettered' % pct(conf.objective),
      // Jobs dead-lettered per job that reached a final outcome.
      ratio(m, conf, w): |||
        sum by (queue) (rate(worker_jobs_dead_lettered_total{%(m)s}[%(w)s]))
        /
        (
          sum by (queue) (rate(worker_jobs_completed_total{%(m)s}[%(w)s]))
          +
          sum by (queue) (rate(worker_jobs_dead_lettered_total{%(m)s}[%(w)s]))
        )
      ||| % { m: m, w: w },
    },
  },

  // Record names, for the alerts below, the dashboards and the tests
  // (alerts.render.record_names()["slo"]).
  _records+:: { slo: $._sloRecords },
  _sloRecords:: {
    [name]: {
      local metric = slos[name].metric,
      ratio: { [w]: 'queue:%s:ratio_rate%s' % [metric, w] for w in windows },
      // The error ratio the objective allows (1 - objective), per queue.
      budget: 'queue:%s:budget_ratio' % metric,
      // Share of the budget not spent over the SLO window: 1 - ratio / budget.
      budgetLeft: 'queue:%s:budget_remaining%s' % [metric, s.window],
    }
    for name in std.objectFields(slos)
  } + {
    oldestAge: 'queue:worker_queue_oldest_message_age_seconds:max',
  },

  local r = self._sloRecords,

  assert std.member(['critical', 'warning'], latency.severity) : 'HighJobQueueLatency.severity',
  assert 2 * seconds(s.longWindowInterval) <= 300 :
         'slo.longWindowInterval: at most half of the 5m lookback delta',

  // One rule per record: each group of queues is its own term, joined with `or` (the
  // groups' queues are disjoint).
  local anyGroup(terms) =
    if std.length(terms) == 1 then terms[0]
    else std.join('or\n', ['(\n%s)\n' % std.join('', ['  ' + l + '\n' for l in std.split(std.rstripChars(t, '\n'), '\n')]) for t in terms]),

  local ratioRule(name, w) = {
    record: r[name].ratio[w],
    expr: anyGroup([slos[name].ratio(matchers([sel, g.match]), g.conf, w) for g in slos[name].groups]),
  },

  prometheusRules+:: {
    groups+: [
      {
        name: 'worker-slo-records',
        rules: [
          ratioRule(name, w)
          for name in std.objectFields(slos)
          for w in windows
          if !isLong(w)
        ] + [
          {
            // A series per queue that has the SLI's counters, at the queue's budget.
            record: r[name].budget,
            expr: anyGroup([
              '%s * group by (queue) (%s{%s})\n' % [
                '%.12g' % (1 - g.conf.objective),
                slos[name].present,
                matchers([sel, g.match]),
              ]
              for g in slos[name].groups
            ]),
          }
          for name in std.objectFields(slos)
        ] + [
          {
            // Every replica samples the same broker: max, never sum, across replicas.
            record: r.oldestAge,
            expr: 'max by (queue) (worker_queue_oldest_message_age_seconds{%s})' % sel,
          },
        ],
      },
      {
        name: 'worker-slo-records-long',
        interval: s.longWindowInterval,
        rules: [
          ratioRule(name, w)
          for name in std.objectFields(slos)
          for w in windows
          if isLong(w)
        ] + [
          {
            record: r[name].budgetLeft,
            expr: '1 - %s / %s' % [r[name].ratio[s.window], r[name].budget],
          }
          for name in std.objectFields(slos)
        ],
      },
    ],
  },

  local dashboardUrl(panelId) = lib.panelUrl(c, panelId, ['queue']),

  // The burn rate of one queue over window w, read at notification time ('n/a' before
  // the window has data).
  local burnOf(name, w) =
    '{{ with printf "%s{queue=%%q} / %s{queue=%%q}" $labels.queue $labels.queue | query }}'
    % [r[name].ratio[w], r[name].budget]
    + '{{ . | first | value | printf "%.1f" }}x{{ else }}n/a{{ end }}',
  local budgetLeftOf(name) =
    '{{ with printf "%s{queue=%%q}" $labels.queue | query }}' % r[name].budgetLeft
    + '{{ . | first | value | humanizePercentage }}{{ else }}unknown{{ end }}',

  // What an SLO promises, queue group by queue group.
  local promises(name) = std.join('; ', [
    '%s on %s' % [slos[name].promise(g.conf), g.queues]
    for g in slos[name].groups
  ]),

  local burnAlert(name, severity) =
    local slo = slos[name];
    local pairs = [b for b in s.burnRates if b.severity == severity];
    local burn(w) = '%s / %s' % [r[name].ratio[w], r[name].budget];
    lib.alert(
      c,
      slo.alert,
      a[slo.alert] { severity: severity },
      std.join('or\n', [
        '(\n  %s > %s\n  and\n  %s > %s\n)\n' % [burn(b.long), num(b.factor), burn(b.short), num(b.factor)]
        for b in pairs
      ]),
      // Distinct per severity: a page and a ticket of one queue are two notifications.
      'Queue {{ $labels.queue }} spends its %s error budget too fast (%s)' % [
        if name == 'queueWait' then 'queue-wait' else 'success',
        std.join(' or ', ['%sx over %s' % [num(b.factor), b.long] for b in pairs]),
      ],
      'Queue {{ $labels.queue }} burns its error budget at {{ $value | printf "%.1f" }}x '
      + 'the rate that would spend it in exactly ' + s.window + ': '
      + std.join('; ', [
        '%s over %s and %s over %s (%s above %sx)' % [
          burnOf(name, b.long),
          b.long,
          burnOf(name, b.short),
          b.short,
          if severity == 'critical' then 'pages' else 'tickets',
          num(b.factor),
        ]
        for b in pairs
      ])
      + '. Error budget left over ' + s.window + ': ' + budgetLeftOf(name)
      + '. SLO: ' + promises(name) + '.',
      '{{ $value | printf "%.1f" }}x burn rate',
      dashboardUrl(a[slo.alert].panelId),
    ),

  local latencyGroups = groups(latency, { thresholdSeconds: latency.thresholdSeconds }),

  prometheusAlerts+:: {
    groups+: [
      {
        name: 'worker-slo-alerts',
        rules: [
          burnAlert(name, severity)
          for name in ['queueWait', 'success']
          for severity in severities
        ] + [
          lib.alert(
            c,
            'HighJobQueueLatency',
            latency,
            std.join('or\n', [
              '%s > %s\n' % [narrowed(r.oldestAge, g.match), num(g.conf.thresholdSeconds)]
              for g in latencyGroups
            ]),
            'Ready messages wait too long in queue {{ $labels.queue }}',
            'The oldest ready message of queue {{ $labels.queue }} has waited '
            + '{{ $value | humanizeDuration }} since it became runnable (max across '
            + 'replicas), and has been above its threshold (%s) for more than %s: ' % [
              std.join(', ', [
                '%s on %s' % [human(g.conf.thresholdSeconds), g.queues]
                for g in latencyGroups
              ]),
              latency['for'],
            ]
            + 'no worker takes jobs from the queue, or far too few. Jobs that never '
            + 'start are invisible to the queue-wait SLO, which counts attempts as '
            + 'they start.',
            '{{ $value | humanizeDuration }} oldest',
            dashboardUrl(latency.panelId),
          ),
        ],
      },
    ],
  },
}
