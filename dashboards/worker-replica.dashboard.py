"""Replica detail: the overview's panels for the one replica chosen in $instance.

Panel ids equal the overview's, so a panel keeps its id (and viewPanel links) on both.
"""

from dashboards import layout
from dashboards.alerting import alerting
from dashboards.grafana import dashboard_link
from dashboards.panels import REPLICA_UID, worker_panels
from dashboards.scope import Scope

alerts = alerting()

dashboard = layout.dashboard(
    title="Worker replica detail",
    uid=REPLICA_UID,
    description="One worker replica, picked in Replica: the overview's panels on its own "
    "series. Generated from dashboards/worker-replica.dashboard.py; edits made in Grafana "
    "are reset on restart.",
    panels=worker_panels(Scope(alerts, replica=True)),
    links=[dashboard_link("Worker overview", alerts.overview_uid, "The whole fleet")],
    templating=layout.variables(alerts, replica=True),
)
