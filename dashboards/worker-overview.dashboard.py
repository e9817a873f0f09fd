"""Worker overview: the whole fleet, read from the recording rules the alerts evaluate.

The uid and the ids of the alerts' panels come from alerts/config.libsonnet, so each
alert's dashboard_url (``/d/<uid>/...?viewPanel=<panelId>``) opens the panel of its signal.
"""

from dashboards import layout, slo
from dashboards.alerting import alerting
from dashboards.dead_letters import dead_letter_panels
from dashboards.grafana import dashboard_link
from dashboards.panels import REPLICA_UID, worker_panels
from dashboards.scope import Scope

alerts = alerting()
scope = Scope(alerts, replica=False)
panels = worker_panels(scope)
panels += dead_letter_panels(scope, below_panels=panels)

dashboard = layout.dashboard(
    title="Worker overview",
    uid=alerts.overview_uid,
    description="The Dramatiq worker fleet: throughput, errors, latency, saturation, backlog, "
    "Redis, rate limiter, alerts, capacity, dead letters and the SLOs. Generated from "
    "dashboards/worker-overview.dashboard.py; edits made in Grafana are reset on restart.",
    panels=panels + slo.slo_panels(scope, below_panels=panels),
    links=[dashboard_link("Replica detail", REPLICA_UID, "The same panels for one replica")],
    templating=layout.variables(alerts, replica=False),
)
