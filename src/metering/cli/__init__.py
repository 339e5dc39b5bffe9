"""The `metering` command: run and operate the service, and call it as a person.

metering serve | migrate | audit | check-catalog | config | token | healthcheck   (operate.py, settings.py)
metering record | balance | usage | events | bill | customer | grant ...         (calls.py)
metering import FILE (JSON lines or CSV) | watch                                  (importer.py, watch.py)
metering completion bash|zsh|fish                                               (completion.py)

Every command is declared with parsing.add_command (options anywhere, examples in
--help); every exit status comes from exits.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from metering.cli import calls, completion, effective_config, importer, operate, watch
from metering.cli.exits import EPILOG, Exit, UsageError
from metering.cli.parsing import subcommands
from metering.config.catalog import CatalogError
from metering.config.settings import ConfigError
from metering.config.stripe import StripeMappingError


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except (UsageError, ConfigError, CatalogError, StripeMappingError) as exc:
        print(f"metering: {exc}" if not str(exc).startswith("metering") else str(exc), file=sys.stderr)
        return Exit.USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `metering events c --all | head`: the reader has gone; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141  # as a shell reports a process ended by SIGPIPE


def distribution_version() -> str:
    """The installed `metering` distribution's version ("unknown" when run from a source tree)."""
    try:
        return version("metering")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metering",
        description="Usage-metering gRPC service: run it, operate it, and call it.",
        epilog="Each command has its own --help, with examples.\n\n" + EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"metering {distribution_version()}")
    commands = subcommands(parser, "command")
    operate.add_commands(commands)
    effective_config.add_command_to(commands)
    calls.add_commands(commands)
    importer.add_command(commands)
    watch.add_command(commands)
    completion.add_command_to(commands, lambda: parser)
    return parser
