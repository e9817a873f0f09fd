"""Real HTTP servers on loopback that speak the protocols of the worker's remote services.

Each one records every request it receives (method, path, query, headers, body, and
the client's port, which tells whether a connection was reused) and answers the way
the real service does, so the integrations are driven by their real client libraries
(httpx, supabase-py, sentry-sdk) over real sockets:

- ``OpenRouterServer``: the chat-completions API (``POST /api/v1/chat/completions``),
  with scripted failures (status, ``Retry-After``, a slow answer).
- ``PostgrestServer``: the PostgREST subset that supabase-py uses for tables, backed by
  in-memory tables whose columns are read from ``schema/supabase.sql``: upsert
  (``Prefer: resolution=merge-duplicates`` + ``on_conflict``), insert, select with
  ``eq`` filters and ``limit``, and the API gateway's key check.
- ``SentryServer``: the Sentry ingestion endpoint (``POST /api/<project>/envelope/``),
  gunzipping and splitting the SDK's envelopes into items.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import re
import threading
import time
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from stack.fleet import ROOT
from stack.servers import free_port

SCHEMA_SQL = ROOT / "schema" / "supabase.sql"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lower-cased
    body: bytes
    client_port: int
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON-encoded unless bytes
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering (a slow service)


class ProtocolServer:
    """A threaded HTTP/1.1 server (keep-alive) on a free loopback port; ``answer`` decides."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.scripted: list[Reply] = []
        self._lock = threading.Lock()
        self.port = free_port()
        #: Seconds every unscripted answer waits (a slow but working service).
        self.delay = 0.0
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with these replies, in order, then normally again."""
        with self._lock:
            self.scripted.extend(replies)

    def answer(self, request: Request) -> Reply:
        raise NotImplementedError

    def _serve(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
            scripted = self.scripted.pop(0) if self.scripted else None
        if scripted is not None:
            return scripted
        reply = self.answer(request)
        reply.delay = reply.delay or self.delay
        return reply

    def start(self) -> ProtocolServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                request = Request(
                    method=self.command,
                    path=parts.path,
                    query=parse_qs(parts.query, keep_blank_values=True),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    client_port=self.client_address[1],
                )
                reply = server._serve(request)
                if reply.delay:
                    time.sleep(reply.delay)
                payload = (
                    reply.body
                    if isinstance(reply.body, bytes)
                    else b""
                    if reply.body is None
                    else json.dumps(reply.body).encode()
                )
                with contextlib.suppress(OSError):  # the client may have given up
                    self.send_response(reply.status)
                    if payload and "Content-Type" not in reply.headers:
                        self.send_header("Content-Type", "application/json")
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

            def handle_error(self, request, client_address) -> None:
                pass  # a client that timed out and closed is part of the tests

        self._httpd = Server(("127.0.0.1", self.port), Handler)
        threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --- OpenRouter ------------------------------------------------------------------------


class OpenRouterServer(ProtocolServer):
    """OpenRouter's chat completions: a key in ``api_keys`` gets a completion echoing the
    last user message; any other key gets OpenRouter's 401."""

    def __init__(self, api_keys: set[str] | None = None) -> None:
        super().__init__()
        self.api_keys = set(api_keys or ())

    @property
    def base_url(self) -> str:
        return f"{self.url}/api/v1"

    def completions(self) -> list[Request]:
        return [r for r in self.requests if r.path == "/api/v1/chat/completions"]

    def answer(self, request: Request) -> Reply:
        if request.method != "POST" or request.path != "/api/v1/chat/completions":
            return Reply(404, {"error": {"code": 404, "message": "Not Found"}})
        key = request.headers.get("authorization", "").removeprefix("Bearer ")
        if key not in self.api_keys:
            return Reply(401, {"error": {"code": 401, "message": "No auth credentials found"}})
        body = request.json()
        prompt = body["messages"][-1]["content"]
        return Reply(
            200,
            {
                "id": "gen-test",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": f"echo: {prompt}"},
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
            },
        )


# --- PostgREST (Supabase) --------------------------------------------------------------


def schema_columns(sql: str) -> dict[str, dict[str, str | None]]:
    """Tables of a schema file: ``{table: {column: default expression or None}}``."""
    tables: dict[str, dict[str, str | None]] = {}
    for name, body in re.findall(
        r"create table if not exists (?:public\.)?(\w+)\s*\((.*?)\n\);", sql, re.S | re.I
    ):
        columns: dict[str, str | None] = {}
        for line in body.splitlines():
            line = line.split("--")[0].strip().rstrip(",")
            match = re.match(r"(\w+)\s+\w+", line)
            if not match or match.group(1).lower() in {"constraint", "primary", "unique", "check"}:
                continue
            default = re.search(r"\bdefault\s+([\w()']+)", line, re.I)
            columns[match.group(1)] = default.group(1) if default else None
        tables[name] = columns
    return tables


class PostgrestServer(ProtocolServer):
    """Supabase's REST endpoint (``/rest/v1/<table>``) behind its gateway's key check."""

    def __init__(self, service_role_key: str, schema: Path = SCHEMA_SQL) -> None:
        super().__init__()
        self.service_role_key = service_role_key
        self.columns = schema_columns(schema.read_text())
        self.tables: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in self.columns}

    def answer(self, request: Request) -> Reply:
        if not request.path.startswith("/rest/v1/"):
            return Reply(404, {"message": "no Route matched with those values"})
        key = self.service_role_key
        if request.headers.get("apikey") != key:
            return Reply(401, {"message": "Invalid API key", "hint": "Double check your key"})
        if request.headers.get("authorization") != f"Bearer {key}":
            return Reply(401, {"code": "PGRST301", "message": "JWSError JWSInvalidSignature"})
        table = request.path.removeprefix("/rest/v1/")
        if table not in self.tables:
            return Reply(
                404,
                {"code": "PGRST205", "message": f"Could not find the table 'public.{table}'"},
            )
        if request.method == "POST":
            return self._insert(table, request)
        if request.method == "GET":
            return self._select(table, request)
        return Reply(405, {"message": "method not supported by this test server"})

    def _prefer(self, request: Request) -> set[str]:
        return {p.strip() for p in request.headers.get("prefer", "").split(",") if p.strip()}

    def _insert(self, table: str, request: Request) -> Reply:
        rows = request.json()
        rows = rows if isinstance(rows, list) else [rows]
        prefer = self._prefer(request)
        conflict_cols = (request.query.get("on_conflict") or ["id"])[0].split(",")
        written = []
        for row in rows:
            unknown = set(row) - set(self.columns[table])
            if unknown:
                column = sorted(unknown)[0]
                return Reply(
                    400,
                    {
                        "code": "PGRST204",
                        "message": f"Could not find the '{column}' column of '{table}' "
                        "in the schema cache",
                    },
                )
            pk = tuple(str(row.get(c)) for c in conflict_cols)
            existing = self.tables[table].get(pk)
            if existing is not None:
                if "resolution=merge-duplicates" in prefer:
                    existing.update(row)
                elif "resolution=ignore-duplicates" not in prefer:
                    return Reply(
                        409,
                        {
                            "code": "23505",
                            "message": "duplicate key value violates unique "
                            f'constraint "{table}_pkey"',
                        },
                    )
                written.append(existing)
            else:
                new = {c: _default(d) for c, d in self.columns[table].items()}
                new.update(row)
                self.tables[table][pk] = new
                written.append(new)
        if "return=representation" in prefer:
            return Reply(201, written)
        return Reply(201)

    def _select(self, table: str, request: Request) -> Reply:
        columns = (request.query.get("select") or ["*"])[0]
        rows = list(self.tables[table].values())
        for name, values in request.query.items():
            if name in self.columns[table] and values[0].startswith("eq."):
                rows = [r for r in rows if str(r.get(name)) == values[0].removeprefix("eq.")]
        if "limit" in request.query:
            rows = rows[: int(request.query["limit"][0])]
        if columns != "*":
            wanted = columns.split(",")
            rows = [{c: r.get(c) for c in wanted} for r in rows]
        return Reply(200, rows)

    def put(self, table: str, row: dict[str, Any]) -> None:
        new = {c: _default(d) for c, d in self.columns[table].items()}
        new.update(row)
        self.tables[table][(str(row["id"]),)] = new


def _default(expression: str | None) -> Any:
    if expression is None:
        return None
    if expression.lower() == "now()":
        return datetime.now(UTC).isoformat()
    return expression.strip("'")


# --- Sentry ----------------------------------------------------------------------------


@dataclass
class Envelope:
    raw: bytes  # decompressed, as the SDK serialized it
    headers: dict[str, Any]
    items: list[tuple[dict[str, Any], bytes]]

    def payloads(self, item_type: str) -> list[dict[str, Any]]:
        return [json.loads(p) for h, p in self.items if h.get("type") == item_type]


def parse_envelope(raw: bytes) -> Envelope:
    """Split a Sentry envelope: a header line, then items (header line + payload)."""
    first, _, rest = raw.partition(b"\n")
    items = []
    while rest.strip():
        header_line, _, rest = rest.partition(b"\n")
        header = json.loads(header_line)
        if "length" in header:
            payload, rest = rest[: header["length"]], rest[header["length"] :]
            rest = rest.removeprefix(b"\n")
        else:
            payload, _, rest = rest.partition(b"\n")
        items.append((header, payload))
    return Envelope(raw, json.loads(first), items)


class SentryServer(ProtocolServer):
    """Sentry's ingestion endpoint; ``dsn`` points an SDK at it."""

    project = "1"

    @property
    def dsn(self) -> str:
        return f"http://public@127.0.0.1:{self.port}/{self.project}"

    def answer(self, request: Request) -> Reply:
        if request.method == "POST" and request.path == f"/api/{self.project}/envelope/":
            return Reply(
                200, {"id": parse_envelope(self._decoded(request)).headers.get("event_id")}
            )
        return Reply(404, {"detail": "not found"})

    @staticmethod
    def _decoded(request: Request) -> bytes:
        encoding = request.headers.get("content-encoding", "")
        if encoding == "gzip":
            return gzip.decompress(request.body)
        if encoding == "deflate":
            return zlib.decompress(request.body)
        if encoding == "br":
            import brotli  # only when the SDK found brotli installed

            return brotli.decompress(request.body)
        return request.body

    def envelopes(self) -> list[Envelope]:
        return [
            parse_envelope(self._decoded(r))
            for r in list(self.requests)
            if r.path == f"/api/{self.project}/envelope/"
        ]

    def events(self) -> list[dict[str, Any]]:
        """Error events (not transactions)."""
        return [e for env in self.envelopes() for e in env.payloads("event")]

    def transactions(self) -> list[dict[str, Any]]:
        return [e for env in self.envelopes() for e in env.payloads("transaction")]
