"""How every command is declared and parsed: options anywhere, examples and exit
statuses in each command's --help.

A command is one call of `add_command` (name, one-line help, the function that runs
it, one to three example invocations) and the arguments added to the parser it
returns. `metering record c ai_tokens --json 5` and `metering record --json c ai_tokens 5`
parse alike: a leaf command's arguments are parsed with argparse's intermixed parsing
(options and positionals in any order).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

from metering.cli.exits import EPILOG

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Runner: TypeAlias = Callable[[argparse.Namespace], int]


class IntermixedSubcommands(argparse._SubParsersAction):  # type: ignore[type-arg]
    """The subcommand action, parsing a leaf command's arguments intermixed.

    argparse's own action parses the rest of the line with `parse_known_args`, where a
    positional that may be omitted (`nargs="?"`) is consumed, empty, by the first option
    that follows it, so `metering balance c --json ai_tokens` was refused. A command with
    subcommands of its own (`token new`) keeps the plain parsing: its own subcommand
    action parses its leaves intermixed in turn.
    """

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        assert isinstance(values, list)
        name, rest = values[0], values[1:]
        chosen = self._name_parser_map.get(name)
        if chosen is None or chosen._subparsers is not None:
            super().__call__(parser, namespace, values, option_string)
            return
        if self.dest is not argparse.SUPPRESS:
            setattr(namespace, self.dest, name)
        parsed, extras = chosen.parse_known_intermixed_args(rest, None)
        for key, value in vars(parsed).items():
            setattr(namespace, key, value)
        if extras:
            # The top-level parser reports them ("unrecognized arguments"), as argparse does.
            vars(namespace).setdefault(argparse._UNRECOGNIZED_ARGS_ATTR, [])
            getattr(namespace, argparse._UNRECOGNIZED_ARGS_ATTR).extend(extras)


def subcommands(parser: argparse.ArgumentParser, dest: str, *, title: str = "commands") -> Subparsers:
    """The subcommands of `parser`, each parsed with its options anywhere."""
    return parser.add_subparsers(dest=dest, required=True, metavar="COMMAND", title=title, action=IntermixedSubcommands)


def add_command(
    commands: Subparsers,
    name: str,
    help_text: str,
    run: Runner | None,
    *,
    examples: Sequence[str] = (),
    usage: str | None = None,
    statuses: str | None = None,
) -> argparse.ArgumentParser:
    """Declare one command: its --help shows `help_text`, the examples and the exit statuses
    (the common ones of exits.py, or `statuses` for a command whose own differ)."""
    epilog = ""
    if examples:
        epilog = "examples:\n" + "\n".join(f"  {example}" for example in examples) + "\n\n"
    parser = commands.add_parser(
        name,
        help=help_text,
        description=help_text[:1].upper() + help_text[1:] + ".",
        epilog=epilog + ("exit status:\n" + statuses if statuses is not None else EPILOG),
        usage=usage,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if run is not None:
        parser.set_defaults(run=run)
    return parser
