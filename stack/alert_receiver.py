"""A small webhook receiver that shows and keeps the notifications Alertmanager sends.

It stands in for the pager and the chat of a real deployment, so a new user watching the
stack sees an alert arrive: Alertmanager's ``pager`` and ``chat`` receivers POST to
``/pager`` and ``/chat`` (any ``/<name>`` works), and for every alert in a notification
the receiver logs one line and appends one JSON line to its store (the alerts of one
notification share its ``notification`` id). It understands both
formats Alertmanager sends: its own webhook payload (``webhook_configs``) and a Slack
incoming-webhook message (``slack_configs``, which alertmanager/alertmanager.yml uses).
``GET /alerts`` returns what it kept, oldest first, a page at a time (filter with
``?receiver=``, ``?alertname=``, ``?status=``; page with ``?offset=`` and ``?limit=``, at
most ``MAX_PAGE`` records; a ``Link: <...>; rel="next"`` header points to the next page
and ``X-Total-Count`` says how many match), ``GET /healthz`` answers 200. It is the demo's
dead man's switch too (``stack.deadman``): ``GET /status`` says whether the always-firing
Watchdog still arrives on ``/deadman`` (``pipeline``: ``ok``, ``silent`` or ``waiting``).

Bounds, for a server anything on the network may reach: the store keeps the newest
``--max-records`` alerts (default 10,000); a notification needs a ``Content-Length`` of
at most 1 MiB (411 without one, 400 if it is not a number, 413 above), JSON nested deeper
than Python can parse is a 400; connections are served by a fixed pool of threads and
closed after 10 s of silence (``worker.http_pool``). Alert text is logged with control
characters escaped, so a newline in a summary cannot forge a log line.

    stack alert-receiver --host 0.0.0.0 --port 9095 --store /data/alerts.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from stack.deadman import DEFAULT_TIMEOUT_SECONDS, DeadmanSwitch
from worker.http_pool import READ_TIMEOUT, PooledMixIn
from worker.logs import MAX_LINE_CHARS, cut, escape
from worker.logs import install as install_safe_logs

log = logging.getLogger("alert_receiver")

#: Alertmanager batches alerts into one notification; a sane one is far below this.
MAX_BODY_BYTES = 1 << 20
#: Most records one ``GET /alerts`` returns.
MAX_PAGE = 1000
_RECEIVER_PATH = re.compile(r"^/([A-Za-z0-9_-]{1,64})$")


class AlertStore:
    """Received alerts as JSON lines in a file (kept across restarts), at most
    ``max_records``: when the file holds half of them it becomes ``<file>.1`` (replacing
    the previous one) and a new file starts, so the newest half to all are kept."""

    def __init__(self, path: Path, max_records: int = 10_000) -> None:
        if max_records < 2:
            raise ValueError("max_records must be at least 2")
        self.path = path
        self.rotated = path.with_name(path.name + ".1")
        self.half = max_records // 2
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch(exist_ok=True)
        self._lock = threading.Lock()
        with open(self.path, encoding="utf-8") as f:
            self._lines = sum(1 for _ in f)

    def append(self, records: list[dict[str, Any]]) -> None:
        with self._lock:
            for record in records:
                if self._lines >= self.half:
                    self.path.replace(self.rotated)
                    self.path.touch()
                    self._lines = 0
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record, sort_keys=True) + "\n")
                self._lines += 1

    def read(self, **filters: str) -> list[dict[str, Any]]:
        with self._lock:
            texts = [p.read_text(encoding="utf-8") for p in (self.rotated, self.path) if p.exists()]
        records = [json.loads(line) for text in texts for line in text.splitlines() if line]
        return [r for r in records if all(r.get(k) == v for k, v in filters.items() if v)]


def records_of(receiver: str, notification: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per alert of a notification, in either format Alertmanager sends."""
    if isinstance(notification.get("alerts"), list):
        return _webhook_records(receiver, notification)
    if isinstance(notification.get("attachments"), list) or "text" in notification:
        return _slack_records(receiver, notification)
    raise ValueError("neither an Alertmanager webhook nor a Slack-style notification")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _webhook_records(receiver: str, notification: dict[str, Any]) -> list[dict[str, Any]]:
    """Alertmanager's own webhook payload (version 4): every alert with its labels."""
    records = []
    for alert in notification["alerts"]:
        if not isinstance(alert, dict):
            raise ValueError("an alert of the notification is not an object")
        labels = alert.get("labels") or {}
        annotations = alert.get("annotations") or {}
        records.append(
            {
                "received_at": _now(),
                "receiver": receiver,
                "format": "webhook",
                "status": str(alert.get("status", notification.get("status", ""))),
                "alertname": str(labels.get("alertname", "")),
                "severity": str(labels.get("severity", "")),
                "summary": str(annotations.get("summary", "")),
                "labels": labels,
                "annotations": annotations,
                "starts_at": alert.get("startsAt"),
                "ends_at": alert.get("endsAt"),
                "fingerprint": alert.get("fingerprint"),
            }
        )
    return records


#: The title of alertmanager/templates/worker.tmpl: "[FIRING:2] Name on queue q (severity)".
_SLACK_TITLE = re.compile(
    r"^\[(?P<status>FIRING|RESOLVED)(?::\d+)?\]\s+(?P<alertname>\S+)"
    r"(?:\s+on queue (?P<queue>\S+))?(?:\s+\((?P<severity>[^)]*)\))?"
)
#: One alert of the text: "*Name*: summary", or "RESOLVED: *Name*: summary".
_SLACK_ALERT = re.compile(
    r"^(?P<resolved>RESOLVED: )?\*(?P<alertname>[^*]+)\*: (?P<summary>.*)$", re.M
)


def _slack_records(receiver: str, notification: dict[str, Any]) -> list[dict[str, Any]]:
    """A Slack incoming-webhook message (Alertmanager's slack_configs): one attachment per
    group; its title says status, alert name and severity, its text one block per alert."""
    attachments = notification.get("attachments") or [notification]
    records = []
    for attachment in attachments:
        if not isinstance(attachment, dict):
            raise ValueError("an attachment of the message is not an object")
        title = str(attachment.get("title") or "")
        text = str(attachment.get("text") or "")
        head = _SLACK_TITLE.match(title)
        common = {
            "received_at": _now(),
            "receiver": receiver,
            "format": "slack",
            "status": head["status"].lower() if head else "",
            "alertname": head["alertname"] if head else "",
            "severity": (head["severity"] or "") if head else "",
            "labels": {
                k: v
                for k, v in (head.groupdict() if head else {}).items()
                if v and k in ("alertname", "queue", "severity")
            },
            "title": title,
            "text": text,
        }
        alerts = list(_SLACK_ALERT.finditer(text))
        if not alerts:
            records.append(dict(common, summary=title))
            continue
        ends = [following.start() for following in alerts[1:]] + [len(text)]
        for alert, end in zip(alerts, ends, strict=True):
            block = text[alert.start() : end]
            record = dict(
                common, alertname=alert["alertname"], summary=alert["summary"], text=block.strip()
            )
            if alert["resolved"]:
                record["status"] = "resolved"
            records.append(record)
    return records


def log_line(record: dict[str, Any]) -> str:
    """One line per alert; every value has its control characters escaped."""
    labels = record["labels"] if isinstance(record["labels"], dict) else {}
    where = "".join(
        f" {k}={escape(str(labels[k]))}"
        for k in ("severity", "instance", "queue", "job_type")
        if k in labels
    )
    return escape(
        f"{record['receiver']}: {record['status'].upper() or '?'} {record['alertname'] or '?'}"
    ) + cut(f"{where} - {escape(record['summary'])}", MAX_LINE_CHARS - 200)


class _Handler(BaseHTTPRequestHandler):
    server: ReceiverServer
    server_version = "alert-receiver"

    @property
    def timeout(self) -> float:  # read by StreamRequestHandler.setup() for the socket
        return self.server.read_timeout

    def log_message(self, format: str, *args: Any) -> None:  # access log: not wanted
        pass

    def _reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if status >= 400:
            self.close_connection = True  # the rest of a refused request is not read
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/healthz":
            self._reply(HTTPStatus.OK, {"status": "ok"})
        elif url.path == "/status":
            self._reply(HTTPStatus.OK, self.server.deadman.status())
        elif url.path == "/alerts":
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            filters = {k: query.get(k, "") for k in ("receiver", "alertname", "status")}
            try:
                offset = int(query.get("offset", 0))
                limit = int(query.get("limit", MAX_PAGE))
            except ValueError:
                offset = limit = -1
            if offset < 0 or not 0 < limit <= MAX_PAGE:
                self._reply(
                    HTTPStatus.BAD_REQUEST, {"error": f"offset >= 0 and 0 < limit <= {MAX_PAGE}"}
                )
                return
            records = self.server.store.read(**filters)
            headers = {"X-Total-Count": str(len(records))}
            if offset + limit < len(records):
                following = urlencode({**query, "offset": offset + limit, "limit": limit})
                headers["Link"] = f'</alerts?{following}>; rel="next"'
            self._reply(HTTPStatus.OK, records[offset : offset + limit], headers)
        else:
            self._reply(HTTPStatus.NOT_FOUND, {"error": "GET /alerts, /status or /healthz"})

    def do_POST(self) -> None:
        match = _RECEIVER_PATH.match(urlsplit(self.path).path)
        if match is None:
            self._reply(HTTPStatus.NOT_FOUND, {"error": "POST to /<receiver>, e.g. /pager"})
            return
        declared = self.headers.get("Content-Length")
        if declared is None or "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._reply(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length required"})
            return
        if not declared.strip().isdigit():  # "-1" read until the client closed
            self._reply(HTTPStatus.BAD_REQUEST, {"error": "Content-Length must be a number"})
            return
        length = int(declared)
        if length > MAX_BODY_BYTES:
            self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "body too large"})
            return
        try:
            records = records_of(match.group(1), json.loads(self.rfile.read(length)))
        except RecursionError:
            self._reply(HTTPStatus.BAD_REQUEST, {"error": "JSON nested too deeply"})
            return
        except (ValueError, AttributeError, TypeError) as exc:
            self._reply(HTTPStatus.BAD_REQUEST, {"error": escape(str(exc))[:200]})
            return
        # One id for the alerts of one notification: a reader can count notifications.
        notification = uuid.uuid4().hex
        for record in records:
            record["notification"] = notification
        kept = self.server.deadman.heard(records)
        self.server.store.append(kept)
        for record in kept:
            log.info("%s", log_line(record))
        # Slack's answer: Alertmanager's Slack notifier checks for "ok".
        self._reply(HTTPStatus.OK, {"ok": True, "received": len(records)})


class ReceiverServer(PooledMixIn, HTTPServer):
    def __init__(
        self,
        address: tuple[str, int],
        store: AlertStore,
        read_timeout: float = READ_TIMEOUT,
        deadman: DeadmanSwitch | None = None,
    ) -> None:
        self.store = store
        self.read_timeout = read_timeout
        self.deadman = deadman or DeadmanSwitch(record=store.append)
        super().__init__(address, _Handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="stack alert-receiver", description=__doc__.strip().splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=9095, help="default %(default)s")
    parser.add_argument(
        "--store",
        type=Path,
        default=Path("alerts.jsonl"),
        help="JSON lines file the received alerts are appended to (default %(default)s)",
    )
    parser.add_argument(
        "--max-records",
        type=int,
        default=10_000,
        help="most alerts kept; older ones are dropped (default %(default)s)",
    )
    parser.add_argument(
        "--read-timeout",
        type=float,
        default=READ_TIMEOUT,
        help="seconds of silence after which a connection is closed (default %(default)s)",
    )
    parser.add_argument(
        "--deadman-timeout",
        type=float,
        default=DEFAULT_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help="report the alerting pipeline silent when no Watchdog arrived on /deadman for "
        "this long (default %(default)g)",
    )
    args = parser.parse_args(argv)
    if args.deadman_timeout <= 0:
        parser.error("--deadman-timeout must be positive")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout, force=True
    )
    install_safe_logs()
    if args.max_records < 2:
        print("alert-receiver: --max-records must be at least 2", file=sys.stderr)
        return 2
    try:
        store = AlertStore(args.store, args.max_records)
        deadman = DeadmanSwitch(timeout=args.deadman_timeout, record=store.append)
        server = ReceiverServer((args.host, args.port), store, args.read_timeout, deadman)
    except OSError as exc:
        print(f"alert-receiver: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    log.info(
        "alert receiver on http://%s:%d, keeping alerts in %s",
        *server.server_address[:2],
        args.store,
    )
    stop_watching = threading.Event()
    deadman.watch(stop_watching)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        stop_watching.set()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
