"""The rules every operator file shares: how it is read, how a table's keys are
checked, and how its problems are reported, all at once, each with its dotted key.

The catalog, the access file, the webhook endpoints and the Stripe mapping are
all TOML, checked completely before anything uses them: an operator fixes every
problem in one round instead of one per restart.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class FileProblems(ValueError):
    """A checked file is invalid; `problems` lists each one with its key."""

    what = "file"  # named in the message: "invalid <what> <source>"

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        listing = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid {self.what} {source}:\n{listing}")


class UnreadableFile(Exception):
    """The file could not be read, or is not TOML; `reason` says which, in words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def read_text(path: str | Path, *, unreadable: str = "cannot read the file") -> str:
    """The file's text, or UnreadableFile("<unreadable>: <why>")."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UnreadableFile(f"{unreadable}: {exc.strerror}") from exc


def parse_document(text: str) -> dict[str, Any]:
    """The TOML document in `text`, or UnreadableFile("not valid TOML: <why>")."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UnreadableFile(f"not valid TOML: {exc}") from exc


def key_problems(
    key: str, table: Mapping[str, Any], *, required: tuple[str, ...], optional: tuple[str, ...]
) -> list[str]:
    """The missing and unknown keys of a TOML table at dotted `key` (the root
    when empty), each reported with its full key."""
    prefix = f"{key}." if key else ""
    problems = [f"{prefix}{name}: required" for name in required if name not in table]
    problems += [f"{prefix}{name}: unknown key" for name in table if name not in required and name not in optional]
    return problems
