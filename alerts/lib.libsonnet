// Helpers every alert and record file shares: number formatting for PromQL and
// annotations, and the one builder of an alerting rule.
{
  // Shortest exact text of a number: 0.1 -> '0.1', 1000 -> '1000', 1234567 -> '1234567'.
  // ('%g' alone rounds to 6 digits, which would silently change a threshold in PromQL.)
  num(x)::
    local short = '%g' % x;
    if std.parseJson(short) == x then short else std.toString(x),

  // A ratio as a percentage for humans: 0.1 -> '10%'.
  pct(ratio):: '%g%%' % (ratio * 100),

  // One alerting rule with the annotations every alert carries, so that the same
  // Alertmanager templates show them all: `value` is the measured value formatted for
  // humans, shown next to the summary; runbook_url is <runbookUrlBase>/<name>.md. `conf` is
  // the alert's entry in config.libsonnet: its severity and its `for` (none: fires at once).
  alert(c, name, conf, expr, summary, description, value, dashboardUrl):: {
    alert: name,
    expr: expr,
    [if std.objectHas(conf, 'for') then 'for']: conf['for'],
    labels: { severity: conf.severity },
    annotations: {
      summary: summary,
      description: description,
      value: value,
      runbook_url: '%s/%s.md' % [c.runbookUrlBase, name],
      dashboard_url: dashboardUrl,
    },
  },

  // The worker dashboard's panel, with the alert's labels `vars` as dashboard variables.
  // The dashboards reuse dashboardUid and each alert's panelId (config.libsonnet).
  panelUrl(c, panelId, vars=[])::
    '%s/d/%s/%s?viewPanel=%d' % [c.grafanaUrlBase, c.dashboardUid, c.dashboardSlug, panelId]
    + std.join('', ['&var-%s={{ $labels.%s }}' % [v, v] for v in vars]),
}
