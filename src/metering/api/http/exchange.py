"""What a call on the HTTP edge tells the ASGI application about its response.

The Connect library writes the response; the application (api.http.app)
wraps its `send`. A call's handler runs in the task of its request, so the
application sets an Exchange in a context variable before it hands the request
on, and the handler (api.http.edge) writes into that same object what the
response start must carry: the HTTP status of a plain-HTTP refusal.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass


@dataclass(slots=True)
class Exchange:
    """One HTTP request's notes from its handler to the application."""

    status: int | None = None  # a unary refusal's HTTP status instead of the protocol's; None: the protocol's


_current: contextvars.ContextVar[Exchange | None] = contextvars.ContextVar("metering_http_exchange", default=None)


def current_exchange() -> Exchange | None:
    """The Exchange of the request being handled (None outside the HTTP edge)."""
    return _current.get()


def begin_exchange() -> tuple[Exchange, contextvars.Token[Exchange | None]]:
    exchange = Exchange()
    return exchange, _current.set(exchange)


def end_exchange(token: contextvars.Token[Exchange | None]) -> None:
    _current.reset(token)
