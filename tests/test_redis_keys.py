"""Every Redis key is named by ``worker.redis_keys.RedisKeys``, and the default namespace is
written once: the layout of each key, and a check over the code that finds a key built
anywhere else."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from worker.redis_keys import DEFAULT_NAMESPACE, RedisKeys, rate_limit_window

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("worker", "stack", "bench", "tests")

#: Where keys may be spelled out: the namespace object, Dramatiq's layout it delegates to,
#: the pins of that layout against Dramatiq's script, and this test.
ALLOWED = {
    Path("worker/redis_keys.py"),
    Path("worker/brokers/redis.py"),
    Path("tests/test_dramatiq_pins.py"),
    Path("tests/test_redis_keys.py"),
}

#: Pieces of Dramatiq's key names (and queue names: ``dq_name``/``xq_name`` build them).
DRAMATIQ_FRAGMENTS = (".XQ", ".DQ", ".msgs", "__acks__", "__heartbeats__")
#: The worker's own keys after their namespace: ``<ns>:completed`` and the like.
WORKER_KEY = re.compile(r"(\{\}|[\w-]):(completed|dead|simulation|ratelimit|org|job|audit)\b")
#: A namespace-like value put in front of a ``:``: ``f"{namespace}:..."``.
NAMESPACE_LIKE = re.compile(r"namespace|\bns\b|job_queue_name|key_prefix", re.IGNORECASE)


def _docstrings(tree: ast.AST) -> set[int]:
    nodes = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, nodes)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }


def _text(node: ast.JoinedStr) -> str:
    """An f-string's literal text, each replacement field as ``{}``."""
    parts = []
    for value in node.values:
        if isinstance(value, ast.Constant):
            parts.append(str(value.value))
        else:
            parts.append("{}")
    return "".join(parts)


def _builds_on_namespace(node: ast.JoinedStr) -> bool:
    """``f"{<namespace-like>}:..."``: a replacement field naming a namespace, then a ``:``."""
    values = node.values
    for field, after in zip(values, values[1:], strict=False):
        if (
            isinstance(field, ast.FormattedValue)
            and NAMESPACE_LIKE.search(ast.unparse(field.value))
            and isinstance(after, ast.Constant)
            and str(after.value).startswith(":")
        ):
            return True
    return False


def hand_built_keys(source: str) -> list[tuple[int, str]]:
    """(line, string) of each string in ``source`` that spells out a Redis key, or the
    default namespace, instead of asking ``RedisKeys``. Docstrings may describe keys."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    inner = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    found = []
    for node in ast.walk(tree):
        if id(node) in skip or id(node) in inner:
            continue
        if isinstance(node, ast.JoinedStr):
            text, on_namespace = _text(node), _builds_on_namespace(node)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text, on_namespace = node.value, False
        else:
            continue
        if (
            on_namespace
            or DEFAULT_NAMESPACE in text
            or any(fragment in text for fragment in DRAMATIQ_FRAGMENTS)
            or WORKER_KEY.search(text)
        ):
            found.append((node.lineno, text))
    return found


def python_files() -> list[Path]:
    return sorted(
        path.relative_to(ROOT)
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if path.relative_to(ROOT) not in ALLOWED
    )


def test_no_redis_key_is_built_outside_the_namespace_object():
    found = {
        f"{path}:{line}": text
        for path in python_files()
        for line, text in hand_built_keys((ROOT / path).read_text())
    }
    assert found == {}, "build these through worker.redis_keys.RedisKeys"


def test_dramatiq_s_layout_is_reached_only_through_the_namespace_object():
    """``worker/brokers/redis.py``'s key functions take a bare namespace; elsewhere keys
    come from ``RedisKeys``, so a key is never half built by hand."""
    layout = re.compile(
        r"\b(queue_key|messages_key|delayed_messages_key|dead_letter_keys|claimed_key"
        r"|claimed_keys_pattern|parse_claimed_key|heartbeats_key)\b"
    )
    found = [str(path) for path in python_files() if layout.search((ROOT / path).read_text())]
    assert found == []


@pytest.mark.parametrize(
    "source",
    [
        'key = f"{ns}:{queue}.XQ"',
        'key = f"{namespace}:{queue}"',
        'key = f"{settings.job_queue_name}:simulation"',
        'key = f"{self.key_prefix}:{{{tag}}}:{name}"',
        'key = f"{prefix}:completed"',
        'client.xrange("billing-jobs:dead")',
        'client.keys(f"{NS}:__acks__.*")',
        'client.llen(f"{queue}.DQ")',
        f'NAMESPACE = "{DEFAULT_NAMESPACE}"',
        f'def f():\n    x = 1\n    return "{DEFAULT_NAMESPACE}:job:" + job_id',
    ],
)
def test_the_check_finds_a_key_built_by_hand(source):
    assert hand_built_keys(source), source


@pytest.mark.parametrize(
    "source",
    [
        'url = f"{host}:{port}"',
        'url = f"redis://:{password}@127.0.0.1:{port}/0"',
        'line = f"{name}: {value}"',
        'def f():\n    """Keys ``<ns>:completed`` and ``<queue>.XQ``."""',
        "key = keys.dead_letters(queue)",
    ],
)
def test_the_check_lets_other_strings_be(source):
    assert hand_built_keys(source) == [], source


def test_the_default_namespace_is_written_once_in_python():
    """Docs, ``.env.example`` and ``docker-compose.yml`` may show it as a value."""
    found = [
        path.relative_to(ROOT)
        for path in ROOT.rglob("*.py")
        if not {".venv", ".run", ".git"} & set(path.relative_to(ROOT).parts)
        for _ in range(path.read_text().count(DEFAULT_NAMESPACE))
    ]
    assert found == [Path("worker/redis_keys.py")]


def test_the_layout_of_every_key():
    """What an operator sees in Redis (``redis-cli --scan``), spelled out once."""
    keys = RedisKeys("ns")
    assert RedisKeys().namespace == DEFAULT_NAMESPACE
    assert {
        "queue": keys.queue("fast"),
        "messages": keys.messages("fast"),
        "delay_queue": keys.delay_queue("fast"),
        "delayed_messages": keys.delayed_messages("fast"),
        "dead_letters": keys.dead_letters("fast"),
        "dead_letter_messages": keys.dead_letter_messages("fast"),
        "claimed": keys.claimed("b1", "fast"),
        "claimed_pattern": keys.claimed_pattern,
        "heartbeats": keys.heartbeats,
        "everything": keys.everything,
        "completed": keys.completed,
        "dead_letter_reasons": keys.dead_letter_reasons,
        "simulation": keys.simulation,
        "job": keys.job("j1"),
        "organization": keys.organization("o1"),
        "rate_limit": rate_limit_window(keys.rate_limit_prefix, "o1", "minute", 60),
    } == {
        "queue": "ns:fast",
        "messages": "ns:fast.msgs",
        "delay_queue": "ns:fast.DQ",
        "delayed_messages": "ns:fast.DQ.msgs",
        "dead_letters": "ns:fast.XQ",
        "dead_letter_messages": "ns:fast.XQ.msgs",
        "claimed": "ns:__acks__.b1.fast",
        "claimed_pattern": "ns:__acks__.*",
        "heartbeats": "ns:__heartbeats__",
        "everything": "ns:*",
        "completed": "ns:completed",
        "dead_letter_reasons": "ns:dead",
        "simulation": "ns:simulation",
        "job": "ns:job:j1",
        "organization": "ns:org:o1",
        "rate_limit": "ns:ratelimit:{o1}:minute:60",
    }
    assert keys.parse_claimed(keys.claimed("b1", "fast.DQ").encode()) == ("b1", "fast.DQ")
