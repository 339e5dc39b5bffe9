"""The exit status of every `metering` command, decided in one place.

A script branches on it without parsing any text:

    0  done
    1  refused by the service: a definite answer (a limit, a conflict, not found, no permission,
       a closed period; `balance --requested` that does not fit); nothing more will come of
       sending the same command again
    2  usage error: bad arguments, a bad file or setting, or a request the service found malformed
       (INVALID_ARGUMENT); fix the command
    3  no answer: the service is unavailable, timed out or rate-limited this caller; the outcome
       of a write is unknown, so send the same command again (same ids) later

The client's exceptions (metering.client.errors) are mapped by `for_error`, the one table.
"""

from __future__ import annotations

from enum import IntEnum

from metering.client import InvalidRequest, MeteringError, RateLimited, Unavailable


class Exit(IntEnum):
    OK = 0
    REFUSED = 1
    USAGE = 2
    UNAVAILABLE = 3


class UsageError(Exception):
    """A command line, file or setting the command cannot use: exit 2 with this message."""


# Most specific first: the first class the error is an instance of decides.
_BY_ERROR: tuple[tuple[type[MeteringError], Exit], ...] = (
    (Unavailable, Exit.UNAVAILABLE),  # UNAVAILABLE (no connection, database down), DEADLINE_EXCEEDED, CANCELLED
    (RateLimited, Exit.UNAVAILABLE),  # nothing written; the same command later goes through
    (InvalidRequest, Exit.USAGE),  # INVALID_ARGUMENT: the arguments are malformed
    (MeteringError, Exit.REFUSED),  # every other answer: NOT_FOUND, RESOURCE_EXHAUSTED (limit), ALREADY_EXISTS...
)


def for_error(error: MeteringError) -> Exit:
    """The exit status of a call that raised `error`."""
    for kind, status in _BY_ERROR:
        if isinstance(error, kind):
            return status
    return Exit.REFUSED


EPILOG = """\
exit status:
  0  done
  1  refused by the service (limit, conflict, not found, permission...; balance --requested that does not fit)
  2  usage error: bad arguments, file or setting, or a request the service found malformed
  3  no answer: unavailable, timed out or rate-limited; send the same command again later"""
