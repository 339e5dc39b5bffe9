from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from metering.config.access import load_access
from metering.config.settings import ConfigError
from metering.domain.access import TOKEN_PREFIX, Caller, Role, caller_entry, new_token, token_digest
from metering.domain.errors import TokenExpired
from metering.domain.rate_limits import CallerLimits, RateLimit

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


def test_limits_are_read_per_caller(tmp_path: Path) -> None:
    token, other = new_token(), new_token()
    policy = load_access(
        write(
            tmp_path,
            f"""
            [callers.gateway]
            roles = ["recorder"]
            token_sha256 = "{token_digest(token)}"
            requests_per_second = 2.5
            max_in_flight = 8
            [callers.importer]
            roles = ["recorder"]
            token_sha256 = "{token_digest(other)}"
            requests_per_second = 100
            burst = 500
            [callers.ui]
            roles = ["reader"]
            certificate_cn = "ui.internal"
            """,
        ),
        METERS,
    )
    gateway, importer, ui = policy.callers
    assert gateway.limits == CallerLimits(rate=RateLimit(2.5, 3), max_in_flight=8)  # burst: one second's worth
    assert importer.limits == CallerLimits(rate=RateLimit(100, 500))
    assert ui.limits == CallerLimits()


def test_a_token_may_expire(tmp_path: Path) -> None:
    lasting, expiring, dated = new_token(), new_token(), new_token()
    policy = load_access(
        write(
            tmp_path,
            f"""
            [callers.gateway]
            roles = ["recorder"]
            token_sha256 = [
                "{token_digest(lasting)}",
                {{ sha256 = "{token_digest(expiring)}", expires = 2026-12-01T12:00:00+01:00 }},
                {{ sha256 = "{token_digest(dated)}", expires = 2027-01-31 }},
            ]
            """,
        ),
        METERS,
    )
    noon_utc = datetime(2026, 12, 1, 11, tzinfo=UTC).timestamp()  # 12:00+01:00
    assert policy.caller_for_token(expiring, now=noon_utc - 1) is not None
    with pytest.raises(TokenExpired) as caught:
        policy.caller_for_token(expiring, now=noon_utc)
    assert caught.value.caller == "gateway" and caught.value.expired_at == "2026-12-01T11:00:00+00:00"
    end = datetime(2027, 1, 31, tzinfo=UTC).timestamp()  # a date: midnight UTC
    assert policy.caller_for_token(dated, now=end - 1) is not None
    with pytest.raises(TokenExpired):
        policy.caller_for_token(dated, now=end)
    assert policy.caller_for_token(lasting, now=end * 2) is not None


DIGEST = "0" * 64


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("requests_per_second = 0", "requests_per_second: expected a number greater than 0"),
        ("requests_per_second = nan", "requests_per_second: expected a number greater than 0"),
        ("requests_per_second = true", "requests_per_second: expected a number greater than 0"),
        ("requests_per_second = '10'", "requests_per_second: expected a number greater than 0"),
        ("requests_per_second = 10\nburst = 0", "burst: expected a whole number of at least 1"),
        ("requests_per_second = 10\nburst = 2.5", "burst: expected a whole number of at least 1"),
        ("burst = 10", "burst: needs requests_per_second"),
        ("max_in_flight = 0", "max_in_flight: expected a whole number of at least 1"),
        ("max_in_flight = 1.5", "max_in_flight: expected a whole number of at least 1"),
    ],
)
def test_bad_limits_name_their_key(tmp_path: Path, entry: str, message: str) -> None:
    text = f"[callers.a]\nroles = ['reader']\ntoken_sha256 = '{DIGEST}'\n{entry}\n"
    with pytest.raises(ConfigError, match=message):
        load_access(write(tmp_path, text), METERS)


@pytest.mark.parametrize(
    ("digests", "message"),
    [
        (f"[{{ sha256 = '{DIGEST}', expires = 2027-01-01T00:00:00 }}]", r"token_sha256\[0\].expires: give the offset"),
        (f"[{{ sha256 = '{DIGEST}', expires = '2027-01-01' }}]", r"token_sha256\[0\].expires: expected a TOML date"),
        (f"[{{ sha256 = '{DIGEST}', until = 2027-01-01 }}]", r"token_sha256\[0\].until: unknown key"),
        ("[{ expires = 2027-01-01 }]", r"token_sha256\[0\].sha256: expected a SHA-256 hex digest"),
        ("[{ sha256 = 'abc' }]", "expected 64 hexadecimal digits"),
        ("[1]", "expected a SHA-256 hex digest, a { sha256, expires } table"),
    ],
)
def test_bad_expiries_name_their_key(tmp_path: Path, digests: str, message: str) -> None:
    text = f"[callers.a]\nroles = ['reader']\ntoken_sha256 = {digests}\n"
    with pytest.raises(ConfigError, match=message):
        load_access(write(tmp_path, text), METERS)


def test_every_problem_of_a_file_is_named_at_once(tmp_path: Path) -> None:
    text = (
        "[callers.a]\nroles = ['nobody']\ntoken_sha256 = 'abc'\nmax_in_flight = 0\n"
        "[callers.b]\nroles = ['reader']\ncertificate_cn = ''\nrequests_per_second = -1\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_access(write(tmp_path, text), METERS)
    for problem in ("unknown role 'nobody'", "64 hexadecimal", "max_in_flight", "certificate_cn", "requests_per"):
        assert problem in str(caught.value)
