from __future__ import annotations

import os
import re
from datetime import timedelta

import pytest

from metering.config.catalog import load_catalog
from metering.config.files import access_policy
from metering.config.settings import ConfigError, Settings, is_loopback


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.database_url is None
    assert settings.grpc_port == 50051
    assert settings.metrics_port == 9464
    assert settings.catalog_path is None
    assert settings.db_timeout == timedelta(seconds=2)
    assert settings.backfill_window == timedelta(days=35)
    assert settings.auth_file is None and not settings.allow_unauthenticated
    assert settings.tls_cert is None and settings.tls_client_ca is None
    assert settings.max_message_bytes == 4 * 1024 * 1024
    assert settings.writer_workers == 1
    assert settings.writer_linger == timedelta(milliseconds=2)
    assert settings.read_linger == timedelta(milliseconds=1)
    assert settings.invoice_grace == timedelta(hours=1)
    assert settings.close_interval == timedelta(seconds=10)
    assert settings.test_only_close_pause == timedelta(0)


def test_closing_settings() -> None:
    settings = Settings.from_env({"METERING_INVOICE_GRACE": "0s", "METERING_CLOSE_INTERVAL": "250ms"})
    assert (settings.invoice_grace, settings.close_interval) == (timedelta(0), timedelta(milliseconds=250))
    with pytest.raises(ConfigError, match="METERING_CLOSE_INTERVAL"):
        Settings.from_env({"METERING_CLOSE_INTERVAL": "0s"})


def test_the_anchor_skew_tolerance_is_a_clock_skew() -> None:
    assert Settings.from_env({}).anchor_skew_tolerance == timedelta(minutes=5)
    assert Settings.from_env({"METERING_ANCHOR_SKEW_TOLERANCE": "0s"}).anchor_skew_tolerance == timedelta(0)
    assert Settings.from_env({"METERING_ANCHOR_SKEW_TOLERANCE": "1d"}).anchor_skew_tolerance == timedelta(days=1)
    with pytest.raises(ConfigError, match="METERING_ANCHOR_SKEW_TOLERANCE"):
        Settings.from_env({"METERING_ANCHOR_SKEW_TOLERANCE": "2d"})


def test_values() -> None:
    settings = Settings.from_env(
        {
            "METERING_DATABASE_URL": "postgresql://db/x",
            "METERING_GRPC_PORT": "0",
            "METERING_DB_TIMEOUT": "500ms",
            "METERING_BACKFILL_WINDOW": "12h",
            "METERING_LOG_LEVEL": "debug",
            "METERING_WRITER_WORKERS": "3",
            "METERING_WRITER_LINGER": "0ms",
            "METERING_READ_LINGER": "5ms",
        }
    )
    assert settings.database_url == "postgresql://db/x"
    assert settings.grpc_port == 0
    assert settings.db_timeout == timedelta(milliseconds=500)
    assert settings.backfill_window == timedelta(hours=12)
    assert settings.log_level == "DEBUG"
    assert settings.writer_workers == 3
    assert settings.writer_linger == timedelta(0)
    assert settings.read_linger == timedelta(milliseconds=5)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"METERING_GRPC_PORT": "http"}, "METERING_GRPC_PORT"),
        ({"METERING_GRPC_PORT": "70000"}, "at most 65535"),
        ({"METERING_DB_TIMEOUT": "2"}, "METERING_DB_TIMEOUT"),
        ({"METERING_DB_POOL_MIN": "5", "METERING_DB_POOL_MAX": "2"}, "must not exceed"),
        ({"METERING_ALLOW_UNAUTHENTICATED": "maybe"}, "expected 1 or 0"),
        ({"METERING_AUTH_FILE": "a.toml", "METERING_ALLOW_UNAUTHENTICATED": "true"}, "contradict"),
        ({"METERING_TLS_KEY": "k.pem"}, "go together"),
        ({"METERING_MAX_MESSAGE_BYTES": "100"}, "at least 1024"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_workers_and_shutdown_delay() -> None:
    defaults = Settings.from_env({})
    assert defaults.workers == 1 and defaults.shutdown_delay == timedelta(0)
    settings = Settings.from_env({"METERING_WORKERS": "4", "METERING_SHUTDOWN_DELAY": "5s"})
    assert settings.workers == 4 and settings.shutdown_delay == timedelta(seconds=5)
    assert Settings.from_env({"METERING_WORKERS": "auto"}).workers == len(os.sched_getaffinity(0))
    for bad in ("0", "-1", "two", "257"):
        with pytest.raises(ConfigError, match="METERING_WORKERS"):
            Settings.from_env({"METERING_WORKERS": bad})


def test_the_service_listens_on_this_machine_only_until_callers_authenticate() -> None:
    open_service = Settings.from_env({})
    assert (open_service.grpc_host, open_service.metrics_host) == ("127.0.0.1", "127.0.0.1")
    secured = Settings.from_env({"METERING_AUTH_FILE": "callers.toml"})
    assert (secured.grpc_host, secured.metrics_host) == ("0.0.0.0", "0.0.0.0")
    chosen = Settings.from_env({"METERING_GRPC_HOST": "10.0.0.5", "METERING_METRICS_HOST": "::1"})
    assert (chosen.grpc_host, chosen.metrics_host) == ("10.0.0.5", "::1")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("metering.internal", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_an_open_service_refuses_a_network_address_unless_asked_to_run_open(caplog: pytest.LogCaptureFixture) -> None:
    catalog = load_catalog(None)
    with pytest.raises(ConfigError, match=re.escape("METERING_GRPC_HOST='0.0.0.0' would let anyone on the network")):
        access_policy(Settings.from_env({"METERING_GRPC_HOST": "0.0.0.0"}), catalog)
    # The embedded database on loopback runs open, with the warning.
    assert access_policy(Settings.from_env({}), catalog) is None
    assert "AUTHENTICATION IS OFF: any client that reaches 127.0.0.1:50051" in caplog.text
    assert "NOT ONLY THIS MACHINE" not in caplog.text
    asked = Settings.from_env({"METERING_GRPC_HOST": "0.0.0.0", "METERING_ALLOW_UNAUTHENTICATED": "1"})
    assert access_policy(asked, catalog) is None
    assert "0.0.0.0:50051 may record, void and read usage (NOT ONLY THIS MACHINE" in caplog.text
    # The HTTP edge serves the API too: the same rule for its address (unless it is off).
    with pytest.raises(ConfigError, match=re.escape("METERING_HTTP_HOST='0.0.0.0' would let anyone")):
        access_policy(Settings.from_env({"METERING_HTTP_HOST": "0.0.0.0"}), catalog)
    http_off = Settings.from_env({"METERING_HTTP_HOST": "0.0.0.0", "METERING_HTTP_PORT": "off"})
    assert access_policy(http_off, catalog) is None
    # Against an external database an open service must be asked for, whatever the address.
    with pytest.raises(ConfigError, match="no callers configured"):
        access_policy(Settings.from_env({"METERING_DATABASE_URL": "postgresql://db/x"}), catalog)


def test_event_loop() -> None:
    assert Settings.from_env({}).event_loop == "asyncio"
    assert Settings.from_env({"METERING_EVENT_LOOP": "uvloop"}).event_loop == "uvloop"
    with pytest.raises(ConfigError, match="METERING_EVENT_LOOP"):
        Settings.from_env({"METERING_EVENT_LOOP": "trio"})
