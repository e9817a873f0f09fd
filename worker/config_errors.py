"""How a configuration error is told: one line naming the variable, what is wrong, and the
value given unless it is secret (``worker.config.load_settings`` raises it as exit 2)."""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from worker.redact import secret_settings, secret_urls, strip_userinfo


def never_echoed(settings_class: type[BaseSettings]) -> frozenset[str]:
    """Settings whose value an error never shows (*secret* in the docs): those typed
    ``SecretStr``, and broker URLs (``SecretUrl(whole=True)``)."""
    urls = secret_urls(settings_class)
    return secret_settings(settings_class) | {name for name in urls if urls[name].whole}


def describe_error(error: dict[str, Any], settings_class: type[BaseSettings]) -> str:
    """One line for a pydantic error naming its variable: what is wrong, and the value
    given unless it is a secret (a URL is shown without its ``user:password@``)."""
    field, variable = _variable(error, settings_class)
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "missing":
        message = "required, not set"
    elif field not in never_echoed(settings_class) and isinstance(error.get("input"), str | int):
        shown = error["input"]
        if field in secret_urls(settings_class):
            shown = strip_userinfo(str(shown))
        message = f"{message} (got {_bounded(repr(shown))})"
    return f"configuration error: {variable}: {_bounded(message, 300)}"


def _bounded(text: str, limit: int = 120) -> str:
    """``text`` on one line, cut to ``limit`` characters: an error names the problem; a
    pasted 10 kB value would bury it."""
    text = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _variable(error: dict[str, Any], settings_class: type[BaseSettings]) -> tuple[str, str]:
    """The field an error is about, and its variable as the user wrote it."""
    where = str(error["loc"][0]) if error["loc"] else "configuration"
    for name, field in settings_class.model_fields.items():
        alias = field.validation_alias
        aliases = [str(a) for a in (alias.choices if isinstance(alias, AliasChoices) else [alias])]
        if where == name or where in aliases:
            return name, where if where in aliases else aliases[0]
    return where, where
