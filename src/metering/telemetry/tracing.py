"""OpenTelemetry traces: off unless an OTLP endpoint is configured.

Off (no OTEL_EXPORTER_OTLP_ENDPOINT), nothing of OpenTelemetry is imported:
no interceptor, no wrapped asyncpg method, no span; the writer and the
interceptor see no Tracing at all.

On (`start`):

- every RPC is a server span (the OpenTelemetry gRPC aio interceptor:
  rpc.system, rpc.service, rpc.method, rpc.grpc.status_code), continuing the
  caller's W3C `traceparent` from the call's metadata (OTEL_PROPAGATORS,
  default tracecontext and baggage); health checks are not traced, since
  probes would drown the calls;
- so is every RPC on the HTTP edge (Tracing.http_call: the same name and
  attributes, rpc.system `connect_rpc`, the refusal's code in
  rpc.connect_rpc.error_code), continuing the caller's `traceparent` header;
- every database statement is a client span (the OpenTelemetry asyncpg
  instrumentation: db.system, db.statement, the peer);
- the batching writer's transaction, shared by many calls, is one span linked
  to every call it carries, a child of the first (sampled) one (so a call that
  waited for that transaction finds its statements in its own trace, and the
  others reach them through the link);
- a trace starts only where a call comes in: a statement of a background loop
  (health probe, closer, outbox poll) outside any span starts no trace of its
  own (StartAtCalls);
- spans leave through a batch span processor (OTEL_BSP_*) and the OTLP/gRPC
  exporter (OTEL_EXPORTER_OTLP_*), as `service.name` OTEL_SERVICE_NAME
  (default `metering`), sampled as OTEL_TRACES_SAMPLER says.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

# Types only: at run time OpenTelemetry is imported inside the functions
# below, which run only with tracing on.
if TYPE_CHECKING:
    import grpc
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.sampling import Sampler, SamplingResult
    from opentelemetry.trace import Link, SpanContext, SpanKind
    from opentelemetry.trace.span import TraceState
    from opentelemetry.util.types import Attributes

DEFAULT_SERVICE_NAME = "metering"
# How long a stopping service waits for the last spans to leave.
SHUTDOWN_EXPORT_SECONDS = 5.0
BATCH_SPAN_NAME = "metering.ledger.write_batch"
# Attributes of the writer's span: events and calls the transaction carried.
BATCH_EVENTS = "metering.batch.events"
BATCH_CALLS = "metering.batch.calls"


class Tracing:
    """What the service does with tracing on: the server interceptor, the
    current call's span (for the writer's links and the log lines), the
    writer's span, and the flush at shutdown."""

    def __init__(self, provider: TracerProvider, exporter: SpanExporter) -> None:
        from opentelemetry import trace

        self._provider = provider
        self._exporter = exporter
        self._tracer = provider.get_tracer(__name__)
        self._current_span = trace.get_current_span

    def server_interceptor(self) -> grpc.aio.ServerInterceptor:  # type: ignore[type-arg]
        from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

        interceptor: grpc.aio.ServerInterceptor = aio_server_interceptor(  # type: ignore[type-arg,no-untyped-call]
            tracer_provider=self._provider, filter_=filters.negate(filters.health_check())
        )
        return interceptor

    @contextmanager
    def http_call(self, method: str, headers: Mapping[str, str]) -> Iterator[Callable[[str], None]]:
        """The server span of one call on the HTTP edge, current inside the block;
        `method` is "/package.Service/Method". The block gets a function that
        marks the call failed with a code name (the gRPC one, lower case being
        Connect's spelling)."""
        from opentelemetry import propagate, trace

        service, _, name = method.lstrip("/").partition("/")
        with self._tracer.start_as_current_span(
            method,
            context=propagate.extract(headers),
            kind=trace.SpanKind.SERVER,
            attributes={"rpc.system": "connect_rpc", "rpc.service": service, "rpc.method": name},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:

            def failed(code: str) -> None:
                span.set_attribute("rpc.connect_rpc.error_code", code.lower())
                span.set_status(trace.Status(trace.StatusCode.ERROR, code))

            yield failed

    def current_call(self) -> SpanContext | None:
        """The span the caller is in (its RPC's), or None outside one."""
        context = self._current_span().get_span_context()
        return context if context.is_valid else None

    def current_ids(self) -> tuple[str, str] | None:
        """The current trace and span ids in hex (as in a traceparent), for log lines."""
        context = self._current_span().get_span_context()
        if not context.is_valid:
            return None
        return f"{context.trace_id:032x}", f"{context.span_id:016x}"

    @contextmanager
    def batch(self, calls: Sequence[SpanContext], events: int) -> Iterator[None]:
        """The span of one writer transaction: linked to each call it carries,
        a child of the first sampled one. Statements inside are its children."""
        from opentelemetry import trace

        # Once per call (a call's events share its span); SpanContext itself is
        # unhashable (its trace state is a mapping).
        distinct = list({(call.trace_id, call.span_id): call for call in calls}.values())
        parent = next((call for call in distinct if call.trace_flags.sampled), distinct[0])
        with self._tracer.start_as_current_span(
            BATCH_SPAN_NAME,
            context=trace.set_span_in_context(trace.NonRecordingSpan(parent)),
            links=[trace.Link(call) for call in distinct],
            attributes={BATCH_EVENTS: events, BATCH_CALLS: len(distinct)},
        ):
            yield

    def shutdown(self) -> None:
        """Export what is still queued, for at most SHUTDOWN_EXPORT_SECONDS. The
        SDK's own shutdown waits up to 30 s, retrying an unreachable collector;
        a stopping service must not (measured: 15 s against a closed port).
        Past the bound, shutting the exporter down ends its retries, and what
        was queued is dropped."""
        flushing = threading.Thread(target=self._provider.shutdown, name="tracing-shutdown", daemon=True)
        flushing.start()
        flushing.join(SHUTDOWN_EXPORT_SECONDS)
        if flushing.is_alive():
            self._exporter.shutdown()
            flushing.join(1.0)


def start() -> Tracing:
    """Set up the tracer provider, the exporter and the asyncpg instrumentation
    (the gRPC one is the server's interceptor: Tracing.server_interceptor)."""
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource, sampler=_start_at_calls())
    exporter = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    AsyncPGInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
    return Tracing(provider, exporter)


def _start_at_calls() -> Sampler:
    from opentelemetry.sdk.trace import sampling
    from opentelemetry.trace import SpanKind, get_current_span

    class StartAtCalls(sampling.Sampler):
        """The sampler OTEL_TRACES_SAMPLER names, for server spans and spans
        inside a trace; any other span without a parent is dropped."""

        def __init__(self, delegate: Sampler) -> None:
            self._delegate = delegate

        def should_sample(
            self,
            parent_context: Context | None,
            trace_id: int,
            name: str,
            kind: SpanKind | None = None,
            attributes: Attributes = None,
            links: Sequence[Link] | None = None,
            trace_state: TraceState | None = None,
        ) -> SamplingResult:
            if kind != SpanKind.SERVER and not get_current_span(parent_context).get_span_context().is_valid:
                return sampling.SamplingResult(sampling.Decision.DROP)
            return self._delegate.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

        def get_description(self) -> str:
            return f"StartAtCalls{{{self._delegate.get_description()}}}"

    # The SDK's own reading of OTEL_TRACES_SAMPLER (and its argument).
    return StartAtCalls(sampling._get_from_env_or_default())
