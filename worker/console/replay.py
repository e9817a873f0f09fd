"""Requeues and purges started from the console, run in a background thread of its own
with the library's pacing (``DeadLetters.requeue`` waits on a ``Pacer`` at the chosen
rate), audited like the command's (``started``, then ``done`` or ``failed``), their
progress kept in memory for the progress page. One runs at a time: a second is refused
while one runs, so two operators never replay the same letters at twice the rate."""

from __future__ import annotations

import copy
import dataclasses
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field

import redis

from worker.dead_letters import DeadLetter, DeadLetters, Outcome, Selection

log = logging.getLogger(__name__)

#: Finished actions remembered for their progress pages.
KEPT = 20


@dataclass
class Replay:
    id: str
    action: str  # "requeue" or "purge"
    selection: Selection
    rate: float | None
    by: str
    outcome: Outcome
    started: float = field(default_factory=time.time)
    finished: float | None = None
    status: str = "running"  # running, done, failed, interrupted
    error: str = ""
    #: Set by the operator's "Stop" (or the console stopping): ends after the message in hand.
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def processed(self) -> int:
        return self.outcome.done + self.outcome.gone + self.outcome.failed

    @property
    def percent(self) -> int:
        matched = self.outcome.matched
        return 100 if not matched else int(100 * self.processed / matched)

    @property
    def running(self) -> bool:
        return self.status == "running"

    def snapshot(self) -> Replay:
        """A copy to render, consistent while the thread goes on: the status is read before
        the counts, and the thread sets it after the last count, so a copy that says done
        holds the final counts (a page reading them one by one could say done beside the
        counts of a moment before)."""
        status, error = self.status, self.error
        return dataclasses.replace(
            self, status=status, error=error, outcome=copy.copy(self.outcome)
        )


class Busy(Exception):
    """Another action is running."""


class _Stopping(Exception):
    """The console is stopping: the action ends after the message in hand."""


class Replays:
    def __init__(self, store: DeadLetters) -> None:
        self.store = store
        self._replays: dict[str, Replay] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def stop(self, timeout: float = 5.0) -> None:
        """Interrupt a running action after its current message (what moved stays moved,
        the rest stays dead) and wait for its audit entry, as Ctrl-C does to the command."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout)

    def get(self, replay_id: str) -> Replay | None:
        """A snapshot of the action (its ``cancel`` is the running action's own)."""
        with self._lock:
            replay = self._replays.get(replay_id)
        return replay.snapshot() if replay else None

    def current(self) -> Replay | None:
        """A snapshot of the running action, if one runs."""
        with self._lock:
            replay = next((r for r in self._replays.values() if r.running), None)
        return replay.snapshot() if replay else None

    def start(
        self,
        action: str,
        selection: Selection,
        letters: list[DeadLetter],
        *,
        rate: float | None,
        by: str,
    ) -> Replay:
        """Start ``action`` on ``letters`` (what ``selection`` matched when confirmed)."""
        done_name = "requeued" if action == "requeue" else "purged"
        replay = Replay(
            id=secrets.token_hex(8),
            action=action,
            selection=selection,
            rate=rate if action == "requeue" else None,
            by=by,
            outcome=Outcome(done_name, matched=len(letters)),
        )
        with self._lock:
            if any(r.running for r in self._replays.values()):
                raise Busy("another requeue or purge is running; wait for it to finish")
            self._replays[replay.id] = replay
            finished = [r for r in self._replays.values() if not r.running]
            for old in finished[: max(len(finished) - KEPT, 0)]:
                del self._replays[old.id]
        self.store.audit(action, by=by, selection=selection, status="started")
        thread = threading.Thread(
            target=self._run, args=(replay, letters), name=f"console-{action}", daemon=True
        )
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return replay

    def _run(self, replay: Replay, letters: list[DeadLetter]) -> None:
        status = "done"

        def on_each(_letter: DeadLetter, _result: str) -> None:
            if self._stopping.is_set() or replay.cancel.is_set():
                raise _Stopping

        try:
            if replay.action == "requeue":
                self.store.requeue(
                    letters, rate=replay.rate or 5.0, outcome=replay.outcome, on_each=on_each
                )
            else:
                self.store.purge(letters, outcome=replay.outcome, on_each=on_each)
        except _Stopping:
            status = "interrupted"
        except redis.RedisError as exc:
            status = "failed"
            replay.error = f"Redis: {type(exc).__name__}"
            log.warning("console %s %s stopped: %s", replay.action, replay.id, replay.error)
        finally:
            try:
                self.store.audit(
                    replay.action,
                    by=replay.by,
                    selection=replay.selection,
                    outcome=replay.outcome,
                    status=status,
                )
            except redis.RedisError as exc:
                log.warning("console %s %s: audit not written: %s", replay.action, replay.id, exc)
            replay.finished = time.time()
            replay.status = status
