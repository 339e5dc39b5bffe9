from __future__ import annotations

from pathlib import Path

import pytest

from metering.access import TOKEN_PREFIX, Caller, Role, caller_entry, load_access, new_token, token_digest
from metering.config import ConfigError

METERS = {"tokens", "calls"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "callers.toml"
    path.write_text(text)
    return path


def test_tokens_are_random_prefixed_and_only_their_digest_identifies_a_caller(tmp_path: Path) -> None:
    old, new = new_token(), new_token()
    assert old != new and old.startswith(TOKEN_PREFIX) and len(old) > 40
    policy = load_access(
        write(
            tmp_path,
            f"""
            [callers.gateway]
            roles = ["recorder", "reader"]
            # two digests while the token rotates; digests are case-insensitive
            token_sha256 = ["{token_digest(old).upper()}", "{token_digest(new)}"]
            meters = ["tokens"]
            [callers.ui]
            roles = ["reader"]
            certificate_cn = "ui.internal"
            """,
        ),
        METERS,
    )
    for token in (old, new):
        caller = policy.caller_for_token(token)
        assert caller is not None and caller.name == "gateway"
        assert caller.roles == {Role.RECORDER, Role.READER}
        assert caller.may_use("tokens") and not caller.may_use("calls")
    assert policy.caller_for_token(token_digest(old)) is None  # the digest itself is no credential
    assert policy.caller_for_token(new_token()) is None
    ui = policy.caller_for_certificate("ui.internal")
    assert ui is not None and ui.meters is None and ui.may_use("calls")
    assert [c.name for c in policy.callers] == ["gateway", "ui"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "define at least one"),
        ("[callers.a]\nroles = []\ntoken_sha256 = '" + "0" * 64 + "'", "roles: expected a non-empty list"),
        ("[callers.a]\nroles = ['reader']\ntoken_sha256 = 'abc'", "expected 64 hexadecimal digits"),
        ("[callers.a]\nroles = ['reader']\ncertificate_cn = ''", "certificate_cn: expected a non-empty string"),
        ("[callers.a]\nroles = ['reader']\ntoken = 'x'", "callers.a.token: unknown key"),
        ("[callers.a]\nroles = ['reader']\nmeters = []\ncertificate_cn = 'a'", "meters: expected a non-empty list"),
        (
            "[callers.a]\nroles = ['reader']\ncertificate_cn = 'x'\n"
            "[callers.b]\nroles = ['reader']\ncertificate_cn = 'x'",
            "also the certificate of 'a'",
        ),
        ("[other]\n", "other: unknown key"),
        ("[callers.a\n", "not valid TOML"),
    ],
)
def test_problems_name_their_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_access(write(tmp_path, text), METERS)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        load_access(tmp_path / "nope.toml", METERS)


def test_caller_entries_load_back_as_written(tmp_path: Path) -> None:
    token = new_token()
    text = caller_entry("gateway", ["reader", "recorder"], token_digests=[token_digest(token)], meters=["tokens"])
    text += caller_entry("ui", ["reader"], certificate_cn="ui.internal")
    policy = load_access(write(tmp_path, text), METERS)
    assert policy.caller_for_token(token) == Caller(
        "gateway", frozenset({Role.READER, Role.RECORDER}), frozenset({"tokens"})
    )
    assert policy.caller_for_certificate("ui.internal") == Caller("ui", frozenset({Role.READER}))
