"""Secrets by reference: a config names an env var or a file that holds the token, never the token."""

from __future__ import annotations

import os
import re
from pathlib import Path

from recipekit.errors import UsageError

_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def check_reference(field: str, ref: str | None) -> list[str]:
    """Problems with a secret reference, without reading the secret."""
    if not ref:
        return []
    if ref.startswith("env:"):
        name = ref[4:]
        return [] if _ENV_NAME.match(name) else [f"{field}: 'env:' must be followed by an env var name"]
    if ref.startswith("file:") or "/" in ref:
        return []
    if _ENV_NAME.match(ref):
        return []
    return [f"{field}: give an env var name (HF_TOKEN, env:NAME) or a file path (file:/run/secrets/hf); "
            "a literal token is not accepted"]


def read_secret(field: str, ref: str | None) -> str | None:
    """Resolve a reference to its value; the value is never logged or written anywhere."""
    if not ref:
        return None
    problems = check_reference(field, ref)
    if problems:
        raise UsageError(problems)
    if ref.startswith("env:") or _ENV_NAME.match(ref):
        name = ref.removeprefix("env:")
        value = os.environ.get(name)
        if not value:
            raise UsageError(f"{field}: env var {name} is not set or empty")
        return value.strip()
    path = Path(ref.removeprefix("file:")).expanduser()
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        raise UsageError(f"{field}: cannot read a token from {path}") from None
    if not value:
        raise UsageError(f"{field}: {path} is empty")
    return value
