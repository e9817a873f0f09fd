"""Worker overview: the whole fleet, read from the recording rules the alerts evaluate.

The uid and the ids of the alerts' panels come from alerts/config.libsonnet, so each
alert's dashboard_url (``/d/<uid>/...?viewPanel=<panelId>``) opens the panel of its signal.
"""

from dashboards import common as c
from dashboards import slo

alerts = c.alerting()
scope = c.Scope(alerts, replica=False)
panels = c.worker_panels(scope)

dashboard = c.dashboard(
    title="Worker overview",
    uid=alerts.overview_uid,
    description="The Dramatiq worker fleet: throughput, errors, latency, saturation, backlog, "
    "Redis, rate limiter, alerts, capacity and the SLOs. Generated from "
    "dashboards/worker-overview.dashboard.py; edits made in Grafana are reset on restart.",
    panels=panels + slo.slo_panels(scope, below_panels=panels),
    links=[c.dashboard_link("Replica detail", c.REPLICA_UID, "The same panels for one replica")],
    templating=c.variables(alerts, replica=False),
)
