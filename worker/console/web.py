"""The console's Starlette application: pages on the dead-letter library and ``reads``.

GET never changes state. Every POST but login and logout is refused with 403 in
read-only mode; every POST needs the session's CSRF token (login: the login form's).
Selections are parsed by the ``worker dead-letters`` command's own parser, so a filter
means in the form exactly what it means on the command line."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode

import redis
from jinja2 import Environment, PackageLoader
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from worker.console import reads
from worker.console.replay import Busy, Replays
from worker.console.security import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    Hardened,
    LoginGuard,
    LoginTokens,
    Session,
    Sessions,
    password_matches,
    token_matches,
)
from worker.console.settings import ConsoleSettings
from worker.dead_letters import DeadLetters, SelectionError
from worker.dead_letters_cli import UsageError, _age, build_parser, selection_of
from worker.jobs import QUEUES

PAGE_SIZE = 50
FORM_MAX_BYTES = 1_000_000
FILTERS = ("queue", "actor", "error", "org", "older_than", "newer_than")


@dataclass
class Console:
    settings: ConsoleSettings
    client: redis.Redis
    store: DeadLetters
    replays: Replays
    guard: LoginGuard
    sessions: Sessions
    login_tokens: LoginTokens
    templates: Environment


def render(request: Request, name: str, status: int = 200, **context) -> HTMLResponse:
    console: Console = request.app.state.console
    session = getattr(request.state, "session", None)
    html = console.templates.get_template(name).render(
        read_only=console.settings.console_read_only,
        csrf=session.csrf if session else "",
        path=request.url.path,
        signed_in=session is not None,
        **context,
    )
    return HTMLResponse(html, status_code=status)


def problem(request: Request, status: int, message: str) -> HTMLResponse:
    return render(request, "problem.html", status, code=status, message=message)


def client_address(request: Request) -> str:
    return request.client.host if request.client else "-"


class TooLarge(Exception):
    """A form body over ``FORM_MAX_BYTES``: 413, read no further."""


async def form_of(request: Request) -> dict[str, list[str]]:
    """The urlencoded form of a POST, read up to ``FORM_MAX_BYTES`` (``TooLarge`` beyond:
    a client, signed in or not, cannot make the console hold a huge body)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_MAX_BYTES:
            raise TooLarge
    return parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)


def first(form, name: str) -> str:
    values = form.get(name) or [""]
    return values[0].strip()


def signed_in(request: Request) -> Session | None:
    console: Console = request.app.state.console
    session = console.sessions.get(request.cookies.get(SESSION_COOKIE))
    request.state.session = session
    return session


def page(handler):
    """A GET page behind the login: redirects to it without a session."""

    async def endpoint(request: Request) -> Response:
        if signed_in(request) is None:
            return RedirectResponse("/login", status_code=303)
        return await handler(request, request.app.state.console)

    return endpoint


def action(handler):
    """A POST behind the login: 403 in read-only mode, without a session or without the
    session's CSRF token; the handler gets the parsed form."""

    async def endpoint(request: Request) -> Response:
        console: Console = request.app.state.console
        if console.settings.console_read_only:
            return problem(request, 403, "read-only console: actions are turned off")
        session = signed_in(request)
        form = await form_of(request)
        if session is None:
            return problem(request, 403, "not signed in")
        if not token_matches(first(form, "csrf"), session.csrf):
            return problem(request, 403, "missing or wrong CSRF token: reload the page")
        return await handler(request, console, form)

    return endpoint


# --- selection -----------------------------------------------------------------------------


def selection_argv(command: str, form, *, ids: list[str], everything: bool = False) -> list[str]:
    argv = [command]
    for name in FILTERS:
        value = first(form, name)
        if value:
            argv.append(f"--{name.replace('_', '-')}={value}")
    if command == "requeue" and first(form, "rate"):
        argv.append(f"--rate={first(form, 'rate')}")
    if everything:
        argv.append("--all")
    return [*argv, "--", *ids] if ids else argv


def parse_selection(command: str, form, *, ids=(), everything=False):
    """(selection, parsed arguments) by the command's parser; ``SelectionError`` or
    ``UsageError`` with the command's own words when the form is wrong."""
    args = build_parser().parse_args(
        selection_argv(command, form, ids=list(ids), everything=everything)
    )
    return selection_of(args), args


def filters_of(form) -> dict[str, str]:
    return {name: first(form, name) for name in FILTERS}


# --- pages ---------------------------------------------------------------------------------


async def login_page(request: Request) -> Response:
    return _login_form(request)


def _login_form(request: Request, status: int = 200, message: str = "") -> Response:
    console: Console = request.app.state.console
    nonce, token = console.login_tokens.new()
    response = render(request, "login.html", status, login_token=token, message=message)
    response.set_cookie(
        LOGIN_COOKIE,
        nonce,
        max_age=600,
        httponly=True,
        samesite="strict",
        secure=console.settings.console_secure_cookie,
    )
    return response


async def login(request: Request) -> Response:
    console: Console = request.app.state.console
    address = client_address(request)
    form = await form_of(request)
    locked = console.guard.locked_for(address)
    if locked:
        return _login_form(
            request, 429, f"Too many failed logins: locked out for {locked:.0f} more seconds."
        )
    if not console.login_tokens.valid(request.cookies.get(LOGIN_COOKIE), first(form, "csrf")):
        return problem(request, 403, "missing or wrong login form token: reload the login page")
    password = (form.get("password") or [""])[0]
    if not password_matches(password, console.settings.console_password.get_secret_value()):
        console.guard.failed(address)
        return _login_form(request, 401, "Wrong password.")
    console.guard.succeeded(address)
    session_id, _ = console.sessions.create(address)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        max_age=int(console.sessions.lifetime),
        httponly=True,
        samesite="strict",
        secure=console.settings.console_secure_cookie,
    )
    response.delete_cookie(LOGIN_COOKIE)
    return response


async def logout(request: Request) -> Response:
    console: Console = request.app.state.console
    session = signed_in(request)
    form = await form_of(request)
    if session is None or not token_matches(first(form, "csrf"), session.csrf):
        return problem(request, 403, "missing or wrong CSRF token")
    console.sessions.end(request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


@page
async def overview(request: Request, console: Console) -> Response:
    s = console.settings
    data = await run_in_threadpool(
        reads.overview, console.client, s.job_queue_name, s.rate_limits, s.rate_limit_overrides
    )
    return render(request, "overview.html", data=data, replay=console.replays.current())


@page
async def dead_letters(request: Request, console: Console) -> Response:
    query = {k: [v] for k, v in request.query_params.items()}
    filters = filters_of(query)
    try:
        selection, _ = parse_selection("list", query)
    except (SelectionError, UsageError) as exc:
        return render(
            request,
            "dead_letters.html",
            400,
            filters=filters,
            error=str(exc),
            letters=[],
            matching=0,
            total=0,
            queues=QUEUES,
            pages=0,
            page=1,
        )
    matching, total = await run_in_threadpool(console.store.select, selection)
    pages = max(-(-len(matching) // PAGE_SIZE), 1)
    try:
        number = min(max(int(request.query_params.get("page", "1")), 1), pages)
    except ValueError:
        number = 1
    now = console.store.clock()
    shown = [
        {**letter.summary(now), "age": _age(now - letter.failed_at)}
        for letter in matching[(number - 1) * PAGE_SIZE : number * PAGE_SIZE]
    ]
    link = {k: v for k, v in filters.items() if v}
    return render(
        request,
        "dead_letters.html",
        filters=filters,
        error="",
        letters=shown,
        matching=len(matching),
        total=total,
        queues=QUEUES,
        pages=pages,
        page=number,
        query=urlencode(link),
        replay=console.replays.current(),
        rate=console.settings.console_replay_rate,
    )


def _chosen(form) -> tuple[str, str, list[str]]:
    """(action, scope, ids) of the dead-letters form's button."""
    verb, _, scope = first(form, "do").partition(" ")
    if verb not in ("requeue", "purge") or scope not in ("selected", "all"):
        raise UsageError("choose requeue or purge, of the selected rows or all matching")
    ids = [i for i in form.get("id", []) if i] if scope == "selected" else []
    if scope == "selected" and not ids:
        raise UsageError("no row selected: tick some rows, or use the 'all matching' button")
    return verb, scope, ids


@action
async def confirm(request: Request, console: Console, form) -> Response:
    try:
        verb, scope, ids = _chosen(form)
        selection, args = parse_selection(verb, form, ids=ids, everything=_everything(form, scope))
    except (SelectionError, UsageError) as exc:
        return problem(request, 400, str(exc))
    matching, total = await run_in_threadpool(console.store.select, selection)
    rate = getattr(args, "rate", None)
    if rate is not None and not first(form, "rate"):
        rate = console.settings.console_replay_rate
    return render(
        request,
        "confirm.html",
        verb=verb,
        scope=scope,
        ids=ids,
        filters=filters_of(form),
        count=len(matching),
        total=total,
        rate=rate,
        selection=selection.describe(),
        seconds=len(matching) / rate if rate else 0,
        sample=[x.message_id for x in matching[:20]],
    )


def _everything(form, scope: str) -> bool:
    return scope == "all" and not any(first(form, name) for name in FILTERS)


@action
async def run(request: Request, console: Console, form) -> Response:
    try:
        verb, scope, ids = _chosen(form)
        selection, args = parse_selection(verb, form, ids=ids, everything=_everything(form, scope))
    except (SelectionError, UsageError) as exc:
        return problem(request, 400, str(exc))
    if selection.is_empty:
        return problem(request, 400, "give ids, filters or all")
    matching, _ = await run_in_threadpool(console.store.select, selection)
    rate = getattr(args, "rate", None)
    if rate is not None and not first(form, "rate"):
        rate = console.settings.console_replay_rate
    try:
        started = await run_in_threadpool(
            console.replays.start,
            verb,
            selection,
            matching,
            rate=rate,
            by=f"console@{client_address(request)}",
        )
    except Busy as exc:
        return problem(request, 409, str(exc))
    return RedirectResponse(f"/replays/{started.id}", status_code=303)


@page
async def replay_page(request: Request, console: Console) -> Response:
    replay = console.replays.get(request.path_params["replay_id"])
    if replay is None:
        return problem(request, 404, "no such requeue or purge (the console forgets old ones)")
    return render(request, "replay.html", replay=replay, counts=replay.outcome.counts())


@action
async def cancel(request: Request, console: Console, form) -> Response:
    replay = console.replays.get(request.path_params["replay_id"])
    if replay is None:
        return problem(request, 404, "no such requeue or purge (the console forgets old ones)")
    replay.cancel.set()
    return RedirectResponse(f"/replays/{replay.id}", status_code=303)


@page
async def job(request: Request, console: Console) -> Response:
    message_id = request.path_params["message_id"]
    letter = await run_in_threadpool(console.store.get, message_id)
    if letter is None:
        return problem(request, 404, f"{message_id}: not a dead letter (already gone)")
    allowed = console.settings.console_allow_payloads
    shown = allowed and request.query_params.get("payload") == "1"
    details = letter.details(console.store.clock(), payload=shown)
    text = json.dumps(details, indent=2, ensure_ascii=True, default=str)
    return render(
        request,
        "job.html",
        letter=letter,
        details=text,
        payload_allowed=allowed,
        payload_shown=shown,
    )


@page
async def completed(request: Request, console: Console) -> Response:
    q = request.query_params
    search = {name: q.get(name, "").strip()[:200] for name in ("text", "actor", "org")}
    rows = await run_in_threadpool(
        reads.completed, console.client, console.settings.job_queue_name, **search
    )
    return render(request, "completed.html", rows=rows[:200], found=len(rows), search=search)


@page
async def audit(request: Request, console: Console) -> Response:
    entries = await run_in_threadpool(console.store.audit_trail, 200)
    return render(request, "audit.html", entries=entries)


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok\n")


async def too_large(request: Request, exc: Exception) -> Response:
    return problem(request, 413, f"form over {FORM_MAX_BYTES:,} bytes")


async def redis_down(request: Request, exc: Exception) -> Response:
    return problem(request, 503, f"Redis: {type(exc).__name__}: cannot read the broker now")


@contextlib.asynccontextmanager
async def lifespan(app: Starlette):
    yield
    # Stopping (SIGTERM, Ctrl-C): a running requeue or purge ends after its current
    # message and writes its "interrupted" audit entry before the process exits.
    await run_in_threadpool(app.state.console.replays.stop)


def build(settings: ConsoleSettings, client: redis.Redis) -> Hardened:
    """The ASGI application of ``settings`` on ``client`` (the broker's Redis)."""
    store = DeadLetters(client, namespace=settings.job_queue_name)
    templates = Environment(loader=PackageLoader("worker.console", "templates"), autoescape=True)
    templates.filters["when"] = lambda seconds: time.strftime(
        "%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds)
    )
    routes = [
        Route("/", overview),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/dead-letters", dead_letters),
        Route("/dead-letters/confirm", confirm, methods=["POST"]),
        Route("/dead-letters/run", run, methods=["POST"]),
        Route("/replays/{replay_id}", replay_page),
        Route("/replays/{replay_id}/stop", cancel, methods=["POST"]),
        Route("/jobs/{message_id:path}", job),
        Route("/completed", completed),
        Route("/audit", audit),
        Route("/healthz", healthz),
        Mount("/static", StaticFiles(packages=[("worker.console", "static")]), name="static"),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={redis.RedisError: redis_down, TooLarge: too_large},
        lifespan=lifespan,
    )
    app.state.console = Console(
        settings=settings,
        client=client,
        store=store,
        replays=Replays(store),
        guard=LoginGuard(settings.console_login_attempts, settings.console_lockout_seconds),
        sessions=Sessions(settings.console_session_minutes * 60),
        login_tokens=LoginTokens(),
        templates=templates,
    )
    return Hardened(app)
