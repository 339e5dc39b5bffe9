"""`metering config`: the settings in force (metering.config.settings, read from the
environment as `metering serve` reads them), with secrets masked, the operator files
they name, checked as serve checks them at start-up, and the client's variables.

Secrets never print: a setting the Settings dataclass keeps out of its repr (the
Stripe key) shows as `****`, and so does the password of any URL (database URLs,
with `password=` in their query too) and the client's token.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import timedelta
from pathlib import Path

from metering.cli import render
from metering.cli.exits import Exit
from metering.cli.parsing import Subparsers, add_command
from metering.client.connection import DEFAULT_TARGET
from metering.config.files import load_config
from metering.config.settings import ConfigError, Settings
from metering.config.toml import FileProblems

MASK = "****"
# A setting's variable is METERING_ and its name in capitals, but for these.
_VARIABLES: dict[str, tuple[str, ...]] = {
    "catalog_path": ("METERING_CATALOG",),
    "tracing": ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
    "stripe_api_key": ("METERING_STRIPE_API_KEY", "STRIPE_API_KEY"),
}
# What an unset optional setting means, where "(unset)" would not say it.
_UNSET = {
    "database_url": "(unset: an embedded PostgreSQL)",
    "catalog_path": "(unset: the packaged sample catalog)",
    "auth_file": "(unset: no authentication)",
}
# The operator files a setting names, read by `metering serve` (the pid file it writes).
_FILES = ("catalog_path", "auth_file", "webhooks_file", "stripe_file", "tls_cert", "tls_key", "tls_client_ca")
# The client library's and the client commands' own variables (metering.client.Connection.from_env).
_CLIENT = (
    "METERING_TARGET",
    "METERING_TOKEN",
    "METERING_CLIENT_TLS_CA",
    "METERING_CLIENT_TLS_CERT",
    "METERING_CLIENT_TLS_KEY",
    "METERING_CLIENT_TLS_SERVER_NAME",
)
_SECRET_QUERY = re.compile(r"(?<=[?&])(password|sslpassword)=[^&#]*")


@dataclass(frozen=True, slots=True)
class Shown:
    """One setting as printed: its variable(s), its value (masked) and where it came from."""

    variable: str
    value: str
    source: str  # "environment" or "default"


def add_command_to(commands: Subparsers) -> None:
    parser = add_command(
        commands,
        "config",
        "print the settings in force (METERING_* variables) with secrets masked, and check the files they name",
        run_config,
        examples=[
            "metering config",
            "METERING_DATABASE_URL=postgresql://app:secret@db/metering metering config",
            "metering config --json | jq -r '.settings.METERING_GRPC_PORT.value'",
        ],
        statuses="  0  every setting and file is valid\n  2  one is not: the reason is printed",
    )
    parser.add_argument("--json", action="store_true", help="print them as JSON")


def run_config(args: argparse.Namespace) -> int:
    env = os.environ
    settings = Settings.from_env(env)  # a bad setting: ConfigError, exit 2 with its reason
    shown = effective(settings, env)
    files = [_file(settings, name) for name in _FILES]
    client = [Shown(name, mask_secret(name, env.get(name, "")), _source(env, (name,))) for name in _CLIENT]
    problem = _check(settings)
    if args.json:
        print(
            json.dumps(
                {
                    "settings": {s.variable: {"value": s.value, "source": s.source} for s in shown},
                    "files": {s.variable: {"path": s.value, "state": s.source} for s in files},
                    "client": {s.variable: {"value": s.value, "source": s.source} for s in client},
                    "valid": problem is None,
                    "problem": problem or "",
                },
                indent=2,
            )
        )
    else:
        print("settings (`*`: from the environment):")
        print(_table(shown))
        print("\nfiles:")
        print(render.table(["variable", "path", "state"], [[s.variable, s.value, s.source] for s in files]))
        print("\nclient commands and library:")
        print(_table(client))
    if problem is not None:
        print(f"metering config: not valid: {problem}", file=sys.stderr)
        return Exit.USAGE
    if not args.json:
        print("\nvalid: the settings and every file they name (as `metering serve` checks them at start-up)")
    return Exit.OK


def effective(settings: Settings, env: Mapping[str, str]) -> list[Shown]:
    """Every setting in force, secrets masked."""
    shown = []
    for field in fields(Settings):
        names = _VARIABLES.get(field.name, ("METERING_" + field.name.upper(),))
        value = getattr(settings, field.name)
        if value is None:
            text = _UNSET.get(field.name, "(unset)")
        elif not field.repr:  # kept out of the repr: a secret
            text = MASK
        elif field.name == "tracing":  # a flag derived from the OTLP endpoint variables
            text = "on (an OTLP endpoint is set)" if value else "off (no OTLP endpoint set)"
        else:
            text = mask_url(value_text(value))
        label = "OTEL_EXPORTER_OTLP_ENDPOINT" if field.name == "tracing" else " / ".join(names)  # (or _TRACES_)
        shown.append(Shown(label, text, _source(env, names)))
    return shown


def value_text(value: object) -> str:
    """A setting's value as it would be written in its variable."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, timedelta):
        return duration_text(value)
    if isinstance(value, tuple):
        return ",".join(value_text(item) for item in value)
    return str(value)


def duration_text(value: timedelta) -> str:
    """500ms, 2s, 5m, 12h, 35d: the largest unit that divides it (the settings' notation)."""
    millis = round(value.total_seconds() * 1000)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if millis and millis % size == 0:
            return f"{millis // size}{unit}"
    return f"{millis}ms" if millis else "0s"


def mask_url(text: str) -> str:
    """`text` with the password of a URL in it masked: `postgresql://app:****@db/x`,
    `?password=****` too. Several hosts (`@db1:5432,db2:5432`) are kept as they are."""
    scheme, separator, rest = text.partition("://")
    if not separator:
        return text
    end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = userinfo.partition(":")[0] + ":" + MASK + "@" + hosts
    tail = _SECRET_QUERY.sub(lambda match: match[1] + "=" + MASK, tail)
    return f"{scheme}://{netloc}{tail}"


def mask_secret(variable: str, value: str) -> str:
    if not value:
        return f"{DEFAULT_TARGET} (default)" if variable == "METERING_TARGET" else "(unset)"
    return MASK if variable == "METERING_TOKEN" else mask_url(value)


def _source(env: Mapping[str, str], names: tuple[str, ...]) -> str:
    return "environment" if any(env.get(name, "").strip() for name in names) else "default"


def _file(settings: Settings, name: str) -> Shown:
    variable = _VARIABLES.get(name, ("METERING_" + name.upper(),))[0]
    path = getattr(settings, name)
    if path is None:
        return Shown(variable, _UNSET.get(name, "(unset)"), "-")
    return Shown(variable, path, "found" if Path(path).is_file() else "MISSING")


def _check(settings: Settings) -> str | None:
    """Every file read and checked as `metering serve` does before it starts; the problem, if any."""
    quiet = logging.getLogger("metering.config")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the "authentication is off" warning: the table says it already
    try:
        load_config(settings)
    except (ConfigError, FileProblems, OSError) as exc:
        return str(exc)
    finally:
        quiet.setLevel(level)
    return None


def _table(shown: list[Shown]) -> str:
    rows = [[s.variable, s.value, "*" if s.source == "environment" else ""] for s in shown]
    return render.table(["variable", "value", ""], rows)
