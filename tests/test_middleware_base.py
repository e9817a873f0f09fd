"""The worker's own hooks: declared once on WorkerMiddleware, called through emit()."""

from __future__ import annotations

import logging

import pytest
from dramatiq import Middleware
from dramatiq.brokers.stub import StubBroker

from worker.middleware.base import HOOKS, WorkerMiddleware, emit


class Heard(WorkerMiddleware):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def after_connection_error(self, broker, queue_name, error) -> None:
        self.calls.append(("after_connection_error", queue_name, str(error)))


class Broken(WorkerMiddleware):
    def after_connection_error(self, broker, queue_name, error) -> None:
        raise RuntimeError("this middleware is broken")


class Plain(Middleware):
    """A Dramatiq middleware that knows nothing of the worker's hooks."""


def test_emit_reaches_worker_middleware_only_and_survives_a_failing_one(caplog):
    heard_before, heard_after = Heard(), Heard()
    broker = StubBroker(middleware=[heard_before, Broken(), Plain(), heard_after])
    with caplog.at_level(logging.ERROR, logger="worker.middleware.base"):
        emit(broker, "after_connection_error", "default", ConnectionError("lost"))
    assert (
        heard_before.calls == heard_after.calls == [("after_connection_error", "default", "lost")]
    )
    assert "after_connection_error of" in caplog.text and "Broken" in caplog.text
    assert not [r for r in caplog.records if "Plain" in r.getMessage()]


def test_every_hook_is_declared_with_a_docstring_and_does_nothing_by_default():
    broker = StubBroker(middleware=[WorkerMiddleware()])
    for hook in HOOKS:
        assert getattr(WorkerMiddleware, hook).__doc__, hook
    emit(broker, "before_consume", "default")
    emit(broker, "after_undecodable_message", "default", "m-1", "undecodable message: x")


def test_emit_refuses_a_hook_that_is_not_declared():
    with pytest.raises(ValueError, match="after_conection_error"):
        emit(StubBroker(middleware=[]), "after_conection_error", "default", None)
