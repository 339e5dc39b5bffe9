"""The access file's check, for the mistakes test_access.py leaves out: each is
named with its caller's key, and every one is reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from metering.config.access import load_access
from metering.config.settings import ConfigError
from metering.domain.access import token_digest

METERS = {"tokens", "calls"}
DIGEST = token_digest("mtr_a")


def problems_of(tmp_path: Path, text: str) -> str:
    path = tmp_path / "callers.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_access(path, METERS)
    return str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[callers]\nloose = 3\n", "callers.loose: expected a table"),
        (
            f"[callers.'no spaces']\nroles = ['reader']\ntoken_sha256 = '{DIGEST}'",
            "callers.no spaces: a caller name is",
        ),
        (
            f"[callers.a]\nroles = ['reader']\ntoken_sha256 = '{DIGEST}'\nmeters = ['tokens', 'minutes']",
            "callers.a.meters: no meter 'minutes' in the catalog",
        ),
        (
            f"[callers.a]\nroles = ['reader']\ntoken_sha256 = '{DIGEST}'\n"
            f"[callers.b]\nroles = ['recorder']\ntoken_sha256 = '{DIGEST}'",
            "callers.b.token_sha256: also the token of 'a'",
        ),
        ("[callers.a]\nroles = ['reader']\n", "callers.a: needs token_sha256 or certificate_cn"),
        ("[callers.a]\nroles = ['owner']\ncertificate_cn = 'a'", "callers.a.roles: unknown role 'owner'"),
    ],
)
def test_problems_name_their_caller(tmp_path: Path, text: str, message: str) -> None:
    assert message in problems_of(tmp_path, text)


def test_a_caller_that_is_not_a_table_hides_no_other_problem(tmp_path: Path) -> None:
    found = problems_of(tmp_path, "[callers]\nloose = 3\n[callers.b]\nroles = []\ncertificate_cn = 'b'\n")
    assert "callers.loose: expected a table" in found
    assert "callers.b.roles: expected a non-empty list" in found


def test_a_caller_limited_to_known_meters_loads(tmp_path: Path) -> None:
    path = tmp_path / "callers.toml"
    path.write_text(f"[callers.a]\nroles = ['reader']\ntoken_sha256 = '{DIGEST}'\nmeters = ['tokens', 'calls']\n")
    caller = load_access(path, METERS).caller_for_token("mtr_a")
    assert caller is not None
    assert caller.meters == frozenset({"tokens", "calls"})
    assert caller.may_use("calls") and not caller.may_use("minutes")
