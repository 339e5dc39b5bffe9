""".env.example lists every setting the service reads, each with its default and a comment.

The one source of truth is Settings.from_env itself: the variables it reads (recorded by
the mapping it is given) must be exactly those of the file, and setting each documented
default must change nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from metering.config.settings import Settings

ENV_EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"
_ASSIGNMENT = re.compile(r"^# ([A-Z][A-Z0-9_]*)=(.*)$")


class Recording(dict[str, str]):
    """An environment that remembers every variable asked for."""

    def __init__(self, values: dict[str, str] | None = None) -> None:
        super().__init__(values or {})
        self.asked: set[str] = set()

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        self.asked.add(key)
        return super().get(key, default)


def read_by_settings() -> set[str]:
    """Every variable Settings.from_env reads, the conditional ones included (tracing's
    other variables are read once an OTLP endpoint is set)."""
    asked: set[str] = set()
    for env in (Recording(), Recording({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})):
        Settings.from_env(env)
        asked |= env.asked
    return asked


def documented() -> dict[str, str]:
    lines = ENV_EXAMPLE.read_text().splitlines()
    entries: dict[str, str] = {}
    for index, line in enumerate(lines):
        match = _ASSIGNMENT.match(line)
        if match is None:
            continue
        name, default = match.groups()
        assert name not in entries, f"{name} is listed twice"
        # A one-line comment says what it is: right above, or above the variable it pairs with.
        above = next(text for text in reversed(lines[:index]) if not _ASSIGNMENT.match(text))
        assert above.startswith("# ") and len(above) > 10, f"{name} has no comment above it"
        entries[name] = default
    return entries


def test_every_setting_is_listed_and_nothing_else() -> None:
    listed, read = set(documented()), read_by_settings()
    assert read - listed == set(), "missing from .env.example"
    assert listed - read == set(), "listed in .env.example but read by no setting"


@pytest.mark.parametrize(("name", "default"), sorted(documented().items()))
def test_each_documented_default_is_the_default(name: str, default: str) -> None:
    # Setting a variable to its documented default changes no setting; "" documents "unset".
    assert Settings.from_env({name: default}) == Settings.from_env({})
