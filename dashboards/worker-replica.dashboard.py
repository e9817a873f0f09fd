"""Replica detail: the overview's panels for the one replica chosen in $instance.

Panel ids equal the overview's, so a panel keeps its id (and viewPanel links) on both.
"""

from dashboards import common as c

alerts = c.alerting()

dashboard = c.dashboard(
    title="Worker replica detail",
    uid=c.REPLICA_UID,
    description="One worker replica, picked in Replica: the overview's panels on its own "
    "series. Generated from dashboards/worker-replica.dashboard.py; edits made in Grafana "
    "are reset on restart.",
    panels=c.worker_panels(c.Scope(alerts, replica=True)),
    links=[c.dashboard_link("Worker overview", alerts.overview_uid, "The whole fleet")],
    templating=c.variables(alerts, replica=True),
)
