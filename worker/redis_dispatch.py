"""The arguments of Dramatiq's Redis ``dispatch`` script, built as its broker builds them.

Dramatiq's ``RedisBroker.do_<command>`` runs the script on its own connection; the worker
also needs it on a timer (``BrokerHeartbeat``) and inside a pipeline (an ack sent in one
round trip with the job's record), so the argument list is built here, in one place.
"""

from __future__ import annotations

from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis


def dispatch_args(
    broker: RedisBroker, command: str, queue: str, *args, maintenance: bool | None = None
) -> list:
    """ARGV for ``dispatch`` (KEYS is ``[broker.namespace]``); ``maintenance`` None leaves
    the broker's random choice, True forces the requeue of dead workers' jobs."""
    if maintenance is None:
        maintenance = broker._should_do_maintenance(command)
    return [
        command,
        current_millis(),
        queue,
        broker.broker_id,
        broker.heartbeat_timeout,
        broker.dead_message_ttl,
        int(maintenance),
        broker._max_unpack_size(),
        *args,
    ]
