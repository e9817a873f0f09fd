"""The overview's dead-letter row: how many jobs wait for an operator in each queue, how
long the oldest has waited, and what `worker dead-letters` replayed or purged.

The depth reads the backlog's recording rule, as the backlog panel does; the oldest age
and the replays have no recording rule and read the raw series, aggregated with max:
every replica reports the same Redis (docs/metrics.md#dead-letters).
"""

from __future__ import annotations

from collections.abc import Sequence

from dashboards.grafana import queries
from dashboards.layout import Layout, runbook_link, timeseries
from dashboards.scope import RATE, Scope

ROW_ID = 107
PANEL_IDS = {"depth": 22, "oldest": 23, "replays": 24}
#: The runbooks that tell how to look at dead letters and replay them.
RUNBOOKS = ("HighJobFailureRate", "JobSuccessBudgetBurn")


def depth(scope: Scope):
    return timeseries(
        PANEL_IDS["depth"],
        "Dead letters per queue",
        "Jobs dead-lettered and not yet requeued or purged, per queue (the broker's dead "
        "backlog, max across replicas): every one is a job that will not happen without an "
        "operator. `worker dead-letters list --queue <queue>` shows them. Good: 0, or "
        "falling after a fix and a replay; dead letters are dropped after their retention "
        "(7 days by default), not kept forever.",
        queries((scope.dead_letters(), "{{queue}}")),
        "short",
        links=[runbook_link(scope.alerts, name) for name in RUNBOOKS],
        min=0,
    )


def oldest(scope: Scope):
    return timeseries(
        PANEL_IDS["oldest"],
        "Oldest dead letter age per queue",
        "How long the oldest dead letter of each queue has waited, since it was "
        "dead-lettered (worker_dead_letters_oldest_age_seconds, max across replicas); 0 when "
        "the queue has none. Good: 0, or hours at most; an age near the retention "
        "(DEAD_LETTERS_TTL_SECONDS, 7 days by default) means failures are about to be "
        "dropped without anyone having looked at them.",
        queries((scope.oldest_dead_letter(), "{{queue}}")),
        "s",
        min=0,
    )


def replays(scope: Scope):
    return timeseries(
        PANEL_IDS["replays"],
        "Dead letters requeued and purged per second",
        f"What `worker dead-letters requeue` moved back to each queue and `purge` deleted, "
        f"per second (rate over {RATE}; counted in Redis by the command, max across "
        "replicas). A requeue is throttled by its --rate: it should show as a flat step at "
        "that rate, and the dead backlog falling by as much. Good: 0 between incidents; "
        "during a replay, at most the spare slots of `stack capacity`, so that the replay "
        "does not burn the queue-wait SLO.",
        queries(
            (scope.dead_letter_replays("requeued"), "requeued {{queue}}"),
            (scope.dead_letter_replays("purged"), "purged {{queue}}"),
        ),
        "ops",
        min=0,
    )


def dead_letter_panels(scope: Scope, below_panels: Sequence) -> list:
    """The dead-letter row, placed under ``below_panels``."""
    grid = Layout()
    grid.y = max(p.gridPos.y + p.gridPos.h for p in below_panels)
    grid.row(ROW_ID, "Dead letters")
    grid.add(depth(scope), oldest(scope), replays(scope))
    return grid.panels
