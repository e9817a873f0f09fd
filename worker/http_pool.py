"""A bounded HTTP server core: a fixed pool of threads, a bounded queue, read timeouts.

``socketserver.ThreadingMixIn`` starts a thread per connection and Python's HTTP
handlers wait for a request without a timeout: 120 stalled connections made 121 threads
in the alert receiver, and would have in the metrics endpoint. ``PooledMixIn`` hands
each accepted connection to one of ``max_threads`` threads; when ``max_pending`` more are
already waiting, the new connection is closed at once. ``READ_TIMEOUT`` seconds without
a byte from the client end its connection (set as the handler's ``timeout``).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from worker.logs import brief

log = logging.getLogger(__name__)

#: Seconds a connection may stay silent before the server closes it.
READ_TIMEOUT = 10.0


class PooledMixIn:
    """Mix into a ``socketserver.TCPServer`` subclass, before it (like ThreadingMixIn).

    Class attributes: ``max_threads`` (default 8) and ``max_pending`` (default 64)."""

    max_threads = 8
    max_pending = 64
    #: The listen backlog: socketserver's 5 makes a burst of clients wait for SYN
    #: retransmits (a second each) before the pool even sees them.
    request_queue_size = 128
    #: At most one "closing a new connection" warning per this many seconds.
    refusal_log_interval = 10.0
    _last_refusal_log = float("-inf")
    _refused = 0

    def _pool(self) -> ThreadPoolExecutor:
        pool = getattr(self, "_executor", None)
        if pool is None:
            self._executor = pool = ThreadPoolExecutor(
                self.max_threads, thread_name_prefix=type(self).__name__
            )
            self._waiting = threading.BoundedSemaphore(self.max_threads + self.max_pending)
        return pool

    def process_request(self, request, client_address) -> None:
        pool = self._pool()
        if not self._waiting.acquire(blocking=False):
            self._refused += 1
            now = time.monotonic()
            if now - self._last_refusal_log >= self.refusal_log_interval:
                log.warning(
                    "%d connections open or waiting: closed %d new one(s)",
                    self.max_threads + self.max_pending,
                    self._refused,
                )
                self._last_refusal_log, self._refused = now, 0
            self.shutdown_request(request)  # type: ignore[attr-defined]
            return
        pool.submit(self._handle, request, client_address)

    def _handle(self, request, client_address) -> None:
        try:
            self.finish_request(request, client_address)  # type: ignore[attr-defined]
        except TimeoutError:
            log.debug("closed a connection from %s silent for too long", client_address[0])
        except Exception as exc:
            log.warning("request from %s failed: %s", client_address[0], brief(exc))
        finally:
            self.shutdown_request(request)  # type: ignore[attr-defined]
            self._waiting.release()

    def handle_error(self, request, client_address) -> None:
        # socketserver prints a traceback to stderr; one line is enough for a client's fault.
        log.warning("request from %s failed", client_address[0])

    def server_close(self) -> None:
        super().server_close()  # type: ignore[misc]
        pool = getattr(self, "_executor", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
