"""The MeteringService servicer: decode, validate, call the domain, encode.

Kept thin on purpose: rules live in validation, the engine, limits and the
ledger; failures are mapped to statuses by the interceptor (api.errors).

The RPC bodies are protocol-neutral: each takes the request message (or
iterator) and raises domain errors; none reads its call's context. The gRPC
server calls them through the interceptor (api.interceptor), the HTTP edge
through its handlers (api.http.edge), each edge authenticating the caller
first; nothing else differs.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import TypeAlias

from metering.api import convert, validation
from metering.api.auth import require_meter
from metering.api.errors import to_rpc_status, write_ok_status
from metering.api.page_tokens import CustomersCursor, EventsCursor, InvoicesCursor, PageTokens
from metering.delivery.stream import OutboxStream
from metering.domain import decimals
from metering.domain.catalog import Catalog
from metering.domain.decimals import ZERO
from metering.domain.errors import (
    BeforeFirstPeriod,
    EventTooOld,
    LimitExceeded,
    MeteringError,
    PeriodClosed,
    TransactionConflict,
)
from metering.services.catalog import Catalogs
from metering.services.credit_notes import CreditNotes
from metering.services.entitlements import Entitlements
from metering.services.invoicing import Invoicing
from metering.services.reporting import Reporting
from metering.services.usage import MeteringEngine, RecordedEvents, RecordResult, UsageCommand
from metering.services.wallets import Wallets
from metering.telemetry import metrics as m
from metering.v1 import (
    billing_pb2,
    catalog_pb2,
    customer_pb2,
    events_pb2,
    grants_pb2,
    ingest_pb2,
    invoices_pb2,
    metering_service_pb2_grpc,
    notifications_pb2,
    reservations_pb2,
    usage_pb2,
    wallets_pb2,
)
from metering.wire.credit_notes import credit_note
from metering.wire.notifications import notification
from metering.wire.values import timestamp

# The call's context, which no RPC body reads: a grpc.aio.ServicerContext from
# the gRPC server, a connectrpc RequestContext from the HTTP edge.
Context: TypeAlias = object


class MeteringServicer(metering_service_pb2_grpc.MeteringServiceServicer):
    """The MeteringService RPCs, kept thin: each decodes and validates its request, calls one
    service, and encodes the answer. It holds no rules and writes no SQL; failures are raised as
    domain errors for the interceptor to map."""

    def __init__(
        self,
        engine: MeteringEngine,
        reporting: Reporting,
        entitlements: Entitlements,
        invoicing: Invoicing,
        metrics: m.Metrics,
        stream: OutboxStream,
        page_tokens: PageTokens,
        *,
        catalogs: Catalogs,
        credit_notes: CreditNotes,
        backfill_window: timedelta,
        wallets: Wallets,
    ) -> None:
        self._credit_notes = credit_notes
        self._wallets = wallets
        self._stream = stream
        self._page_tokens = page_tokens
        self._engine = engine
        self._catalogs = catalogs
        self._reporting = reporting
        self._invoicing = invoicing
        self._entitlements = entitlements
        self._metrics = metrics
        self._backfill_window = backfill_window

    @property
    def _catalog(self) -> Catalog:
        """The catalog in force (a reload swaps it): each method reads it once."""
        return self._catalogs.current.catalog

    async def RecordUsage(  # noqa: N802 - gRPC method name
        self, request: usage_pb2.RecordUsageRequest, context: Context
    ) -> usage_pb2.RecordUsageResponse:
        [result] = await self._record_group([request])
        if isinstance(result, BaseException):
            raise result
        return convert.record_usage_response(result)

    async def RecordUsageBatch(  # noqa: N802
        self, request: ingest_pb2.RecordUsageBatchRequest, context: Context
    ) -> ingest_pb2.RecordUsageBatchResponse:
        validation.batch_size(len(request.events))
        # One group, decided in order in one transaction: a repeated
        # transaction id in a batch behaves exactly as two RecordUsage calls.
        outcomes = await self._record_columns(list(request.events))
        response = ingest_pb2.RecordUsageBatchResponse()
        # Each event's refusal becomes its own status, never the call's, so one
        # bad event does not fail the others.
        if isinstance(outcomes, _Columnar):
            responses = convert.RecordedResponses(outcomes.recorded)
            recorded = 0
            for index in range(len(request.events)):
                result = response.results.add(index=index)
                refused = outcomes.refusals.get(index)
                if refused is not None:
                    result.status.CopyFrom(to_rpc_status(refused))
                else:
                    write_ok_status(result.status)
                    responses.write(result.response, recorded)
                    recorded += 1
            return response
        for index, outcome in enumerate(outcomes):
            result = response.results.add(index=index)  # filled in place: no copy of each response
            if isinstance(outcome, BaseException):
                result.status.CopyFrom(to_rpc_status(outcome))
            else:
                write_ok_status(result.status)
                convert.write_record_usage_response(result.response, outcome)
        return response

    async def RecordUsageStream(  # noqa: N802
        self, request_iterator: AsyncIterator[ingest_pb2.RecordUsageStreamRequest], context: Context
    ) -> ingest_pb2.RecordUsageStreamResponse:
        response = ingest_pb2.RecordUsageStreamResponse()
        # One group of the stream in the writer at a time, in stream order; the
        # messages that arrive meanwhile wait and go next as ONE group (at most
        # a batch's worth of events), decided in stream order in one
        # transaction. A stream whose client sends ahead then writes batches of
        # up to MAX_BATCH_EVENTS rather than one transaction per message: with
        # several worker processes, each holding a few streams, per-message
        # transactions were small and queued on the same counter rows.
        in_flight: asyncio.Task[list[RecordResult | BaseException] | _Columnar] | None = None
        waiting: list[usage_pb2.RecordUsageRequest] = []

        def start() -> None:
            nonlocal in_flight, waiting
            in_flight = asyncio.ensure_future(self._record_columns(waiting, balances=False))
            waiting = []

        async def finish() -> None:
            nonlocal in_flight
            if in_flight is not None:
                outcomes, in_flight = await in_flight, None
                _summarise(response, outcomes)

        try:
            async for message in request_iterator:
                try:
                    validation.batch_size(len(message.events))
                except MeteringError:
                    # Refused as before: what came before it is written first.
                    await finish()
                    if waiting:
                        start()
                        await finish()
                    raise
                if in_flight is not None and in_flight.done():
                    await finish()
                if in_flight is not None and len(waiting) + len(message.events) > validation.MAX_BATCH_EVENTS:
                    await finish()
                if in_flight is None and waiting and len(waiting) + len(message.events) > validation.MAX_BATCH_EVENTS:
                    start()
                waiting.extend(message.events)
                if in_flight is None:
                    start()
            await finish()
            if waiting:
                start()
                await finish()
        finally:
            if in_flight is not None:
                in_flight.cancel()  # the client went away: its queued events are not written
        return response

    async def VoidUsage(  # noqa: N802
        self, request: events_pb2.VoidUsageRequest, context: Context
    ) -> events_pb2.VoidUsageResponse:
        customer_id, transaction_id, reason = validation.void_usage(request)
        result = await self._engine.void_usage(customer_id, transaction_id, reason, allow_meter=require_meter)
        return events_pb2.VoidUsageResponse(
            event=convert.usage_event(result.event),
            duplicate=result.duplicate,
            balance=convert.balance(result.balance),
        )

    async def GrantCredits(  # noqa: N802
        self, request: grants_pb2.GrantCreditsRequest, context: Context
    ) -> grants_pb2.GrantCreditsResponse:
        command = validation.grant_credits(request, self._catalog)
        require_meter(command.meter.slug)
        view, duplicate = await self._entitlements.grant_credits(command)
        return grants_pb2.GrantCreditsResponse(grant=convert.grant(view), duplicate=duplicate)

    async def ListGrants(  # noqa: N802
        self, request: grants_pb2.ListGrantsRequest, context: Context
    ) -> grants_pb2.ListGrantsResponse:
        customer_id, meter, include_expired = validation.list_grants(request, self._catalog)
        require_meter(meter.slug if meter is not None else "")
        views = await self._entitlements.list_grants(customer_id, meter, include_expired=include_expired)
        return grants_pb2.ListGrantsResponse(grants=[convert.grant(view) for view in views])

    async def GrantWalletCredit(  # noqa: N802
        self, request: wallets_pb2.GrantWalletCreditRequest, context: Context
    ) -> wallets_pb2.GrantWalletCreditResponse:
        command = validation.grant_wallet_credit(request, self._catalog)
        for meter in command.meters:
            require_meter(meter.slug)
        answer = await self._wallets.grant(command)
        return wallets_pb2.GrantWalletCreditResponse(
            grant=convert.wallet_grant(answer.grant, answer.wallet.summary.currency),
            duplicate=answer.duplicate,
            wallet=convert.wallet_summary(answer.wallet),
        )

    async def GetWallet(  # noqa: N802
        self, request: wallets_pb2.GetWalletRequest, context: Context
    ) -> wallets_pb2.GetWalletResponse:
        customer_id = validation.customer_id(request.customer_id)
        require_meter("")  # a wallet spans every meter
        view = await self._wallets.get(customer_id, include_inactive=request.include_inactive)
        return wallets_pb2.GetWalletResponse(
            customer_id=customer_id, wallet=convert.wallet_summary(view), as_of_time=timestamp(view.read_at)
        )

    async def ReserveUsage(  # noqa: N802
        self, request: reservations_pb2.ReserveUsageRequest, context: Context
    ) -> reservations_pb2.ReserveUsageResponse:
        command = validation.reserve_usage(request, self._catalog)
        require_meter(command.meter.slug)
        try:
            result = await self._entitlements.reserve(command)
        except LimitExceeded as exc:
            self._metrics.limit_rejections.labels(exc.meter, exc.plan).inc()
            raise
        return reservations_pb2.ReserveUsageResponse(
            reservation=convert.reservation(result),
            duplicate=result.duplicate,
            balance=convert.balance(result.balance),
        )

    async def CommitReservation(  # noqa: N802
        self, request: reservations_pb2.CommitReservationRequest, context: Context
    ) -> reservations_pb2.CommitReservationResponse:
        try:
            result = await self._entitlements.commit(validation.commit_reservation(request), allow_meter=require_meter)
        except PeriodClosed:
            self._metrics.late_events_refused.labels(m.LATE_PERIOD_CLOSED).inc()
            raise
        assert result.event is not None
        meter = result.reservation.meter_slug
        self._metrics.events.labels(meter, m.DUPLICATE if result.duplicate else m.RECORDED).inc()
        if not result.duplicate:
            self._metrics.quantity.labels(meter).inc(float(result.event.quantity))
        return reservations_pb2.CommitReservationResponse(
            event=convert.usage_event(result.event),
            reservation=convert.reservation(result),
            duplicate=result.duplicate,
            balance=convert.balance(result.balance),
        )

    async def ReleaseReservation(  # noqa: N802
        self, request: reservations_pb2.ReleaseReservationRequest, context: Context
    ) -> reservations_pb2.ReleaseReservationResponse:
        customer_id, reservation_id = validation.release_reservation(request)
        result = await self._entitlements.release(customer_id, reservation_id, allow_meter=require_meter)
        return reservations_pb2.ReleaseReservationResponse(
            reservation=convert.reservation(result), balance=convert.balance(result.balance)
        )

    async def CheckBalance(  # noqa: N802
        self, request: usage_pb2.CheckBalanceRequest, context: Context
    ) -> usage_pb2.CheckBalanceResponse:
        query = validation.check_balance(request, self._catalog)
        require_meter(query.meter.slug if query.meter is not None else "")
        report = await self._engine.check_balance(query)
        return convert.check_balance_response(report, await self._wallets.for_balance(report, query))

    async def GetUsage(  # noqa: N802
        self, request: usage_pb2.GetUsageRequest, context: Context
    ) -> usage_pb2.GetUsageResponse:
        query = validation.get_usage(request, self._catalog, self._page_tokens)
        for meter in query.meters:
            require_meter(meter.slug)
        page = await self._reporting.get_usage(query)
        response = usage_pb2.GetUsageResponse(rows=[convert.usage_row(row) for row in page.rows])
        if page.next_cursor is not None:
            response.next_page_token = self._page_tokens.usage(request, page.next_cursor)
        return response

    async def ListUsageEvents(  # noqa: N802
        self, request: events_pb2.ListUsageEventsRequest, context: Context
    ) -> events_pb2.ListUsageEventsResponse:
        query = validation.list_usage_events(request, self._catalog, self._page_tokens)
        require_meter(query.meter.slug if query.meter is not None else "")
        page = await self._reporting.list_events(query)
        response = events_pb2.ListUsageEventsResponse(events=[convert.usage_event(e) for e in page.events])
        if page.next_before is not None:
            response.next_page_token = self._page_tokens.events(request, EventsCursor(*page.next_before))
        return response

    async def EstimateBill(  # noqa: N802
        self, request: billing_pb2.EstimateBillRequest, context: Context
    ) -> billing_pb2.EstimateBillResponse:
        query = validation.estimate_bill(request, self._catalog)
        require_meter("")  # a bill spans every meter
        return convert.bill(await self._invoicing.estimate(query))

    async def ListInvoices(  # noqa: N802
        self, request: invoices_pb2.ListInvoicesRequest, context: Context
    ) -> invoices_pb2.ListInvoicesResponse:
        query = validation.list_invoices(request, self._page_tokens)
        require_meter("")  # an invoice spans every meter
        page = await self._invoicing.list(query)
        response = invoices_pb2.ListInvoicesResponse(invoices=[convert.invoice(i) for i in page.invoices])
        if page.next_before is not None:
            response.next_page_token = self._page_tokens.invoices(request, InvoicesCursor(page.next_before))
        return response

    async def GetInvoice(  # noqa: N802
        self, request: invoices_pb2.GetInvoiceRequest, context: Context
    ) -> invoices_pb2.GetInvoiceResponse:
        invoice_id = validation.invoice_id(request)
        require_meter("")
        return invoices_pb2.GetInvoiceResponse(invoice=convert.invoice(await self._invoicing.get(invoice_id)))

    async def IssueCreditNote(  # noqa: N802
        self, request: invoices_pb2.IssueCreditNoteRequest, context: Context
    ) -> invoices_pb2.IssueCreditNoteResponse:
        command = validation.issue_credit_note(request)
        require_meter("")  # an invoice spans every meter
        issued = await self._credit_notes.issue(command)
        return invoices_pb2.IssueCreditNoteResponse(
            credit_note=credit_note(issued.note), duplicate=issued.duplicate, invoice=convert.invoice(issued.invoice)
        )

    async def UpsertCustomer(  # noqa: N802
        self, request: customer_pb2.UpsertCustomerRequest, context: Context
    ) -> customer_pb2.UpsertCustomerResponse:
        command = validation.upsert_customer(request)
        record, created = await self._engine.upsert_customer(
            command.customer_id, command.plan_slug, command.billing_anchor
        )
        return customer_pb2.UpsertCustomerResponse(customer=convert.customer(record), created=created)

    async def GetCustomer(  # noqa: N802
        self, request: customer_pb2.GetCustomerRequest, context: Context
    ) -> customer_pb2.GetCustomerResponse:
        record = await self._engine.get_customer(validation.customer_id(request.customer_id))
        return customer_pb2.GetCustomerResponse(customer=convert.customer(record))

    async def ListCustomers(  # noqa: N802
        self, request: customer_pb2.ListCustomersRequest, context: Context
    ) -> customer_pb2.ListCustomersResponse:
        page = await self._engine.list_customers(validation.list_customers(request, self._page_tokens))
        response = convert.customers_page(page)
        if page.next_after is not None:
            response.next_page_token = self._page_tokens.customers(request, CustomersCursor(page.next_after))
        return response

    async def GetCatalog(  # noqa: N802
        self, request: catalog_pb2.GetCatalogRequest, context: Context
    ) -> catalog_pb2.GetCatalogResponse:
        require_meter("")  # the catalog spans every meter
        return convert.catalog(self._catalogs.current)

    async def WatchNotifications(  # noqa: N802
        self, request: notifications_pb2.WatchNotificationsRequest, context: Context
    ) -> AsyncIterator[notifications_pb2.WatchNotificationsResponse]:
        query = validation.watch_notifications(request, self._page_tokens)
        require_meter("")  # notifications span every meter
        after = query.after if query.after is not None else await self._stream.now()
        self._metrics.watch_streams.inc()
        try:
            async for stored in self._stream.watch(after, query.wants):
                cursor = self._page_tokens.cursor(stored.position)
                yield notifications_pb2.WatchNotificationsResponse(notification=notification(stored, cursor))
        finally:
            self._metrics.watch_streams.dec()

    async def _record_group(
        self, requests: list[usage_pb2.RecordUsageRequest], *, balances: bool = True
    ) -> list[RecordResult | BaseException]:
        """Events validated one by one, then recorded together in order; each
        answer is what RecordUsage would answer (before encoding; without its
        balance unless `balances`), or its refusal."""
        commands = self._commands(requests)
        valid = [c for c in commands if isinstance(c, UsageCommand)]
        outcomes = await self._engine.record_many(valid, balances=balances) if valid else []
        return self._answers(commands, outcomes)

    async def _record_columns(
        self, requests: list[usage_pb2.RecordUsageRequest], *, balances: bool = True
    ) -> list[RecordResult | BaseException] | _Columnar:
        """_record_group, answered as columns (_Columnar) when the writer
        recorded every valid event by the common-case decision
        (metering.domain.columns)."""
        commands = self._commands(requests)
        valid = [c for c in commands if isinstance(c, UsageCommand)]
        if not valid:
            return self._answers(commands, [])
        found = await self._engine.record_columnar(valid, balances=balances)
        if not isinstance(found, RecordedEvents):
            return self._answers(commands, found)
        refusals: dict[int, BaseException] = {}
        quantities: Counter[tuple[str, Decimal]] = Counter()  # most events of a meter send the same few
        for index, command in enumerate(commands):
            if isinstance(command, BaseException):
                refusals[index] = command
            else:
                quantities[(command.meter.slug, command.quantity)] += 1
        tally = _Tally()
        for (meter, quantity), events in quantities.items():
            tally.recorded(meter, quantity, events)
        tally.publish(self._metrics)
        return _Columnar(refusals, found)

    def _commands(self, requests: list[usage_pb2.RecordUsageRequest]) -> list[UsageCommand | BaseException]:
        """Each request validated (metering.api.validation), or its refusal."""
        now, catalog = self._engine.now(), self._catalog  # read once for the whole group
        commands: list[UsageCommand | BaseException] = []
        for request in requests:
            try:
                valid_command = validation.record_usage(
                    request, catalog, now=now, backfill_window=self._backfill_window
                )
                require_meter(valid_command.meter.slug)
                commands.append(valid_command)
            except MeteringError as exc:
                commands.append(exc)
        return commands

    def _answers(
        self, commands: list[UsageCommand | BaseException], outcomes: list[RecordResult | BaseException]
    ) -> list[RecordResult | BaseException]:
        """The valid commands' outcomes (in order) merged with the others' refusals, and counted."""
        recorded = iter(outcomes)
        answers: list[RecordResult | BaseException] = []
        tally = _Tally()
        for command in commands:
            if isinstance(command, BaseException):
                answers.append(command)
                continue
            outcome = next(recorded)
            tally.count(command.meter.slug, outcome)
            answers.append(outcome)
        tally.publish(self._metrics)
        return answers


class _Tally:
    """The metrics of a group of RecordUsage events, added up first and then
    published with one increment per series (not one per event). Plain dicts:
    a RecordUsage call builds one for its single event, and a Counter costs
    Python calls to build and to add to."""

    __slots__ = ("events", "late", "overage", "quantity", "rejections")

    def __init__(self) -> None:
        self.events: dict[tuple[str, str], int] = {}  # meter, outcome
        self.quantity: dict[str, Decimal] = {}  # meter: sum of recorded quantities
        self.rejections: dict[tuple[str, str], int] = {}  # meter, plan
        self.overage: dict[tuple[str, str], Decimal] = {}  # meter, plan
        self.late: dict[str, int] = {}  # reason

    def count(self, meter: str, outcome: RecordResult | BaseException) -> None:
        events = self.events
        if isinstance(outcome, RecordResult):  # first: nearly every outcome
            if outcome.duplicate:
                key = (meter, m.DUPLICATE)
                events[key] = events.get(key, 0) + 1
            else:
                self.recorded(meter, outcome.event.quantity)
                if outcome.overage > ZERO:
                    key = (meter, outcome.plan_slug)
                    self.overage[key] = decimals.add(self.overage.get(key, ZERO), outcome.overage)
        elif isinstance(outcome, TransactionConflict):
            key = (meter, m.PAYLOAD_CONFLICT)
            events[key] = events.get(key, 0) + 1
        elif isinstance(outcome, LimitExceeded):
            key = (meter, m.REJECTED)
            events[key] = events.get(key, 0) + 1
            key = (outcome.meter, outcome.plan)
            self.rejections[key] = self.rejections.get(key, 0) + 1
        else:
            reason = _late_reason(outcome)
            if reason is not None:
                self.late[reason] = self.late.get(reason, 0) + 1

    def recorded(self, meter: str, quantity: Decimal, events: int = 1) -> None:
        """New events of `quantity` each recorded (with no overage, or their overage counted apart)."""
        key = (meter, m.RECORDED)
        self.events[key] = self.events.get(key, 0) + events
        total = quantity if events == 1 else decimals.EXACT.multiply(quantity, events)
        self.quantity[meter] = decimals.add(self.quantity.get(meter, ZERO), total)

    def publish(self, metrics: m.Metrics) -> None:
        for (meter, outcome), events in self.events.items():
            metrics.child(metrics.events, meter, outcome).inc(events)
        for meter, quantity in self.quantity.items():
            metrics.child(metrics.quantity, meter).inc(float(quantity))
        for (meter, plan), rejections in self.rejections.items():
            metrics.child(metrics.limit_rejections, meter, plan).inc(rejections)
        for (meter, plan), overage in self.overage.items():
            metrics.child(metrics.overage, meter, plan).inc(float(overage))
        for reason, refused in self.late.items():
            metrics.child(metrics.late_events_refused, reason).inc(refused)


def _late_reason(refusal: BaseException) -> str | None:
    """The `reason` label of a late event's refusal (None: not one)."""
    if isinstance(refusal, PeriodClosed):
        return m.LATE_PERIOD_CLOSED
    if isinstance(refusal, BeforeFirstPeriod):
        return m.LATE_BEFORE_FIRST_PERIOD
    if isinstance(refusal, EventTooOld):
        return m.LATE_TOO_OLD
    return None


@dataclass(frozen=True, slots=True)
class _Columnar:
    """A group's answers when its valid events were recorded as columns: the
    refusals of validation by index in the group, and the recorded events (the
    others, in order)."""

    refusals: dict[int, BaseException]
    recorded: RecordedEvents


def _summarise(
    response: ingest_pb2.RecordUsageStreamResponse, outcomes: list[RecordResult | BaseException] | _Columnar
) -> None:
    """Counts a group's outcomes into a stream's summary; its refusals by stream index."""
    # The summary needs no response for an event that succeeded.
    index = response.recorded_count + response.duplicate_count + response.failed_count
    if isinstance(outcomes, _Columnar):
        for offset, refused in outcomes.refusals.items():
            response.failures.add(index=index + offset, status=to_rpc_status(refused))
        response.failed_count += len(outcomes.refusals)
        response.recorded_count += len(outcomes.recorded)
        return
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            response.failed_count += 1
            response.failures.add(index=index, status=to_rpc_status(outcome))
        elif outcome.duplicate:
            response.duplicate_count += 1
        else:
            response.recorded_count += 1
        index += 1
