"""The alert receiver's dead man's switch: it hears the always-firing Watchdog and says
when the alerting pipeline has gone silent.

Alertmanager sends the Watchdog to the receiver ``deadman`` about once a minute. When no
firing Watchdog has arrived for ``timeout`` seconds (counted from the start, before the
first one), Prometheus, every Alertmanager, or the path between them and the receiver is
broken, and no other alert can arrive either: the switch logs one line, its status says
``silent``, and a ``PipelineSilent`` record goes into the receiver's store (so ``/alerts``
lists it). The first Watchdog after that ends it, with a ``resolved`` record. Heartbeats
themselves are counted, not stored: one a minute would fill the store with noise.

In production the same Watchdog goes to an external dead man's switch instead
(docs/running.md); this one makes the demo stack and the local twin watch themselves.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("alert_receiver.deadman")

#: Alertmanager repeats the Watchdog every 1m, flushing every 30s: one arrives at least
#: every 1m30s while the pipeline works; twice that leaves room for a slow delivery.
DEFAULT_TIMEOUT_SECONDS = 180.0
SILENT_ALERTNAME = "PipelineSilent"


def _iso(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))


class DeadmanSwitch:
    """Counts Watchdog deliveries on ``receiver`` and reports silence after ``timeout`` s.

    Options:
      timeout    seconds without a firing Watchdog before the pipeline counts as silent
                 (default 180: twice the longest gap between two deliveries)
      receiver   the receiver (path) the Watchdog is routed to (default ``deadman``)
      alertname  the heartbeat alert (default ``Watchdog``)
      record     called with the PipelineSilent records, to keep them (the store)
      clock      monotonic seconds (tests pass their own)
    """

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        receiver: str = "deadman",
        alertname: str = "Watchdog",
        record: Callable[[list[dict[str, Any]]], None] = lambda records: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout <= 0:
            raise ValueError("the dead man's switch timeout must be positive")
        self.timeout, self.receiver, self.alertname = timeout, receiver, alertname
        self._record, self._clock = record, clock
        self._lock = threading.Lock()
        self._started = clock()
        self._last: float | None = None  # monotonic time of the last heartbeat
        self._last_wall: float | None = None
        self._silent_since: float | None = None  # wall time the silence was declared
        self.deliveries = 0

    def is_heartbeat(self, record: dict[str, Any]) -> bool:
        return (
            record.get("receiver") == self.receiver
            and record.get("alertname") == self.alertname
            and record.get("status") == "firing"
        )

    def heard(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Take the heartbeats out of a notification's records; return the others."""
        beats = [r for r in records if self.is_heartbeat(r)]
        if beats:
            with self._lock:
                self.deliveries += 1
                self._last, self._last_wall = self._clock(), time.time()
                silent_since, self._silent_since = self._silent_since, None
            if silent_since is not None:
                silence = self._last_wall - silent_since + self.timeout
                log.warning(
                    "deadman: pipeline delivering again: %s received on /%s after about "
                    "%.0fs of silence",
                    self.alertname,
                    self.receiver,
                    silence,
                )
                self._record([self._silence_record("resolved", silence)])
        return [r for r in records if not self.is_heartbeat(r)]

    def check(self) -> bool:
        """Declare the pipeline silent once the timeout has passed; True when it just did."""
        with self._lock:
            since = self._last if self._last is not None else self._started
            quiet = self._clock() - since
            if self._silent_since is not None or quiet < self.timeout:
                return False
            self._silent_since = time.time()
        last = _iso(self._last_wall) if self._last_wall else "never since start"
        log.error(
            "deadman: PIPELINE SILENT: no %s on /%s for %.0fs (timeout %.0fs; last %s): "
            "Prometheus, every Alertmanager, or the path to this receiver is down, and no "
            "alert can arrive",
            self.alertname,
            self.receiver,
            quiet,
            self.timeout,
            last,
        )
        self._record([self._silence_record("firing", quiet)])
        return True

    def status(self) -> dict[str, Any]:
        """What the status page shows: ok, silent, or waiting (no Watchdog yet)."""
        with self._lock:
            now = self._clock()
            state = (
                "silent"
                if self._silent_since is not None
                else "ok"
                if self._last is not None
                else "waiting"
            )
            return {
                "pipeline": state,
                "receiver": self.receiver,
                "alertname": self.alertname,
                "timeout_seconds": self.timeout,
                "watchdog_deliveries": self.deliveries,
                "last_watchdog_at": _iso(self._last_wall) if self._last_wall else None,
                "seconds_since_last_watchdog": (
                    round(now - self._last, 1) if self._last is not None else None
                ),
                "silent_since": _iso(self._silent_since) if self._silent_since else None,
            }

    def _silence_record(self, status: str, seconds: float) -> dict[str, Any]:
        summary = (
            f"No {self.alertname} on /{self.receiver} for {seconds:.0f}s: "
            "the alerting pipeline is silent"
            if status == "firing"
            else f"{self.alertname} arrives again on /{self.receiver}: the alerting "
            "pipeline delivers"
        )
        return {
            "received_at": _iso(time.time()),
            "receiver": self.receiver,
            "format": "deadman",
            "status": status,
            "alertname": SILENT_ALERTNAME,
            "severity": "critical",
            "summary": summary,
            "labels": {"alertname": SILENT_ALERTNAME, "severity": "critical"},
        }

    def watch(self, stop: threading.Event, interval: float | None = None) -> threading.Thread:
        """Check in a daemon thread every ``interval`` s (a tenth of the timeout, at most
        1 s) until ``stop`` is set."""
        step = interval if interval is not None else min(1.0, self.timeout / 10)

        def loop() -> None:
            while not stop.wait(step):
                self.check()

        thread = threading.Thread(target=loop, name="deadman", daemon=True)
        thread.start()
        return thread
