"""The `metering` command: run and operate the service, and call it as a person.

metering serve | migrate | audit | check-catalog | token | healthcheck    (operate.py)
metering record | balance | usage | events | bill | customer | grant ...  (calls.py)
metering import FILE.jsonl                                                (importer.py)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from metering.cli import calls, importer, operate
from metering.config.catalog import CatalogError
from metering.config.settings import ConfigError
from metering.config.stripe import StripeMappingError


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except (ConfigError, CatalogError, StripeMappingError) as exc:
        print(f"metering: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metering", description="Usage-metering gRPC service.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    operate.add_commands(commands)
    calls.add_commands(commands)
    importer.add_command(commands)
    return parser
