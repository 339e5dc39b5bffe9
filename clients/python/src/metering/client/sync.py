"""MeteringClient: every RPC of metering.v1 as a typed blocking method, on grpc's sync channel.

The same calls, results, retries and errors as AsyncMeteringClient (aio.py), for
threaded or synchronous code.

Each call has a deadline (`timeout`, per attempt) and is retried by the
client's RetryPolicy when it got no answer, resending the very same request
message. Refusals raise the exceptions of metering.client.errors. With nothing
listening, a call raises Unreachable at once, unless the client waits for the
service (`wait_for_ready=True`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from metering.client import models, requests
from metering.client.connection import Connection
from metering.client.errors import MeteringError, Unavailable, Unreachable, error_from_rpc, exhausted
from metering.client.failopen import FailOpen, FailOpenNotice, fails_open
from metering.client.models import CreditNoteReason, EnforcementMode, InvoiceStatus, NotificationType, WindowSize
from metering.client.requests import CreditLine, Quantity, UsageRecord, quantity_text
from metering.client.retry import (
    DEFAULT_TIMEOUT,
    STREAM_CHUNK,
    RetryNotice,
    RetryPolicy,
    attempt_timeout,
    backoff_delay,
    next_attempt,
    should_retry,
)
from metering.v1 import ingest_pb2, metering_service_pb2_grpc, wallets_pb2

R = TypeVar("R")


class MeteringClient:
    """A client of metering.v1.MeteringService for blocking code; one may be shared by threads.

    `with MeteringClient(Connection.from_env()) as client: ...`
    """

    def __init__(
        self,
        connection: Connection | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        wait_for_ready: bool = False,
        on_retry: Callable[[RetryNotice], None] | None = None,
        fail_open: bool = False,
        on_fail_open: Callable[[FailOpenNotice], None] | None = None,
    ) -> None:
        """Open a channel to `connection` (default: `Connection.from_env()`).

        `timeout` is each attempt's deadline in seconds and `retry` the policy for calls that
        got no answer (`RetryPolicy()`: 5 attempts within 30 s). `wait_for_ready=False` (the
        default) fails fast: with nothing listening a call raises `Unreachable` at once;
        `True` waits for the service to come up (within the deadline and the retries), as
        for a service that restarts. `on_retry` hears each resend. `fail_open=True` makes
        `check_balance` answer "allowed" during an outage (see metering.client.failopen),
        counted in `fail_open_count` and announced to `on_fail_open`.
        """
        self.connection = connection or Connection.from_env()
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.wait_for_ready = wait_for_ready  # wait for a (re)starting service instead of failing fast
        self.fail_open = fail_open
        self._on_retry = on_retry
        self._fail_open = FailOpen(on_fail_open)
        self._channel = self.connection.sync_channel()
        self.stub = metering_service_pb2_grpc.MeteringServiceStub(self._channel)  # raw access
        self._closed = False

    def __enter__(self) -> MeteringClient:
        """Use the client in `with`; it is closed on the way out."""
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        """Close the client."""
        self.close()

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._closed = True
        self._channel.close()

    @property
    def fail_open_count(self) -> int:
        """How many balance checks this client answered "allowed" during an outage (fail-open)."""
        return self._fail_open.count

    # --- the retry loop -------------------------------------------------------------------------

    def _retrying(self, method: str, timeout: float | None, attempt: Callable[[float], R]) -> R:
        started = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            try:
                return attempt(attempt_timeout(self.retry, timeout, time.monotonic() - started))
            except grpc.RpcError as exc:
                error = error_from_rpc(exc, target=self.connection.target)
                reached = not isinstance(error, Unreachable)
                if not should_retry(error.code, closed_locally=self._closed, reason=error.reason, reached=reached):
                    if isinstance(error, Unavailable):
                        error.attempts = attempts
                    raise error from None
            delay = backoff_delay(self.retry, attempts, server_delay=error.details.retry_delay)
            if not next_attempt(self.retry, attempts, time.monotonic() - started, delay):
                raise exhausted(error, attempts) from None
            if self._on_retry is not None:
                self._on_retry(RetryNotice(method, attempts, error.code, delay))
            time.sleep(delay)

    def call(self, method: str, request: Message, *, timeout: float | None = None) -> Any:
        """A unary RPC by name with its raw request; the raw response. Deadline, retries and
        error decoding as for the typed methods."""
        function = getattr(self.stub, method)
        metadata = self.connection.metadata()

        def attempt(deadline: float) -> Any:
            return function(request, timeout=deadline, metadata=metadata, wait_for_ready=self.wait_for_ready)

        return self._retrying(method, self.timeout if timeout is None else timeout, attempt)

    # --- usage ----------------------------------------------------------------------------------

    def record_usage(
        self,
        customer_id: str,
        meter_slug: str | None = None,
        quantity: Quantity | None = None,
        *,
        transaction_id: str,
        price_slug: str | None = None,
        event_time: datetime | None = None,
        properties: Mapping[str, str] | None = None,
        enforcement: EnforcementMode = EnforcementMode.ENFORCE_LIMIT,
        timeout: float | None = None,
    ) -> models.RecordResult:
        """Record one usage event, exactly once per transaction id (RecordUsage).

        Name the meter (`record_usage("acme", "ai_tokens", 1500, transaction_id=...)`) or a
        price (`record_usage("acme", price_slug="gpu_hour_a100", quantity=2, transaction_id=...)`),
        exactly one of them (TypeError otherwise). A replay of the same transaction id and
        payload answers the original event with `duplicate=True`; a hard limit raises
        LimitExceeded (nothing written) unless `enforcement` is ALLOW_OVERAGE.
        """
        record = UsageRecord(
            customer_id, meter_slug, quantity, transaction_id, price_slug, event_time, properties, enforcement
        )
        return models.RecordResult.from_proto(self.call("RecordUsage", record.to_proto(), timeout=timeout))

    def record_usage_batch(
        self, events: Sequence[UsageRecord], *, timeout: float | None = None
    ) -> list[models.BatchOutcome]:
        """Up to 1000 events in one call; one outcome per event, in order (a refused event
        carries its exception in `error` and does not fail the others)."""
        request = ingest_pb2.RecordUsageBatchRequest(events=[e.to_proto() for e in events])
        response = self.call("RecordUsageBatch", request, timeout=timeout)
        return [models.BatchOutcome.from_proto(r) for r in response.results]

    def record_usage_stream(
        self, events: Sequence[UsageRecord], *, timeout: float | None = None
    ) -> models.StreamSummary:
        """Any number of events over one RecordUsageStream; resent whole if the stream breaks."""
        protos = [e.to_proto() for e in events]
        messages = [
            ingest_pb2.RecordUsageStreamRequest(events=protos[i : i + STREAM_CHUNK])
            for i in range(0, len(protos), STREAM_CHUNK)
        ]
        metadata = self.connection.metadata()

        def attempt(deadline: float) -> Any:
            return self.stub.RecordUsageStream(
                iter(messages), timeout=deadline, metadata=metadata, wait_for_ready=self.wait_for_ready
            )

        response = self._retrying("RecordUsageStream", self.timeout if timeout is None else timeout, attempt)
        return models.StreamSummary.from_proto(response)

    def void_usage(
        self, customer_id: str, transaction_id: str, reason: str, *, timeout: float | None = None
    ) -> models.VoidResult:
        """Void a recorded event (a compensating entry; idempotent): it stops counting and billing."""
        request = requests.void_usage(customer_id, transaction_id, reason)
        return models.VoidResult.from_proto(self.call("VoidUsage", request, timeout=timeout))

    def check_balance(
        self,
        customer_id: str,
        meter_slug: str = "",
        *,
        requested: Quantity | None = None,
        fail_open: bool | None = None,
        timeout: float | None = None,
    ) -> models.BalanceReport:
        """What the customer has used and may still use, per meter (one meter, or all by default).

        With `requested`, `requested_allowed` says whether that much more fits now. With
        `fail_open` (default: the client's `fail_open`), an outage (Unavailable after the
        retries) answers "allowed" (`fail_open=True` on the report, no balances) with a
        WARNING log line, `fail_open_count` and `on_fail_open`; a refusal is raised as always.
        """
        request = requests.check_balance(customer_id, meter_slug, requested=requested)
        try:
            response = self.call("CheckBalance", request, timeout=timeout)
        except MeteringError as error:
            if (self.fail_open if fail_open is None else fail_open) and fails_open(error):
                return self._fail_open.answer(customer_id, meter_slug, quantity_text(requested), error)
            raise
        return models.BalanceReport.from_proto(response)

    def get_usage(
        self,
        customer_id: str,
        meter_slugs: Sequence[str],
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        window: WindowSize = WindowSize.UNSPECIFIED,
        time_zone: str = "",
        group_by: Sequence[str] = (),
        filters: Mapping[str, Sequence[str]] | None = None,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> models.UsagePage:
        """Aggregated usage of `meter_slugs` over [start, end) (default: the current period until
        now), in windows of `window` (one window by default; day and month windows in
        `time_zone`), grouped by the `group_by` properties and limited by `filters`; paged."""
        request = requests.get_usage(
            customer_id,
            meter_slugs,
            start=start,
            end=end,
            window=window,
            time_zone=time_zone,
            group_by=group_by,
            filters=filters,
            page_size=page_size,
            page_token=page_token,
        )
        return models.UsagePage.from_proto(self.call("GetUsage", request, timeout=timeout))

    def list_usage_events(
        self,
        customer_id: str,
        meter_slug: str = "",
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> models.EventPage:
        """A customer's raw events (of one meter, or all), newest first, within [start, end);
        paged: pass `next_page_token` back as `page_token` until it is empty."""
        request = requests.list_usage_events(
            customer_id, meter_slug, start=start, end=end, page_size=page_size, page_token=page_token
        )
        return models.EventPage.from_proto(self.call("ListUsageEvents", request, timeout=timeout))

    # --- credits and reservations ---------------------------------------------------------------

    def grant_credits(
        self,
        customer_id: str,
        meter_slug: str,
        quantity: Quantity,
        *,
        grant_id: str,
        effective_time: datetime | None = None,
        expire_time: datetime | None = None,
        expire_at_period_end: bool = False,
        reason: str = "",
        timeout: float | None = None,
    ) -> models.GrantResult:
        """Add `quantity` to a meter's allowance (GrantCredits), once per `grant_id`: a replay
        answers the original grant. It counts from `effective_time` (default now) until
        `expire_time`, or until the period ends with `expire_at_period_end`."""
        request = requests.grant_credits(
            customer_id,
            meter_slug,
            quantity,
            grant_id=grant_id,
            effective_time=effective_time,
            expire_time=expire_time,
            expire_at_period_end=expire_at_period_end,
            reason=reason,
        )
        return models.GrantResult.from_proto(self.call("GrantCredits", request, timeout=timeout))

    def grant_wallet_credit(
        self,
        customer_id: str,
        amount: Quantity,
        currency: str,
        *,
        grant_id: str,
        category: models.CreditCategory = models.CreditCategory.PAID,
        priority: int = 0,
        effective_time: datetime | None = None,
        expire_time: datetime | None = None,
        meter_slugs: Sequence[str] = (),
        reason: str = "",
        timeout: float | None = None,
    ) -> models.WalletGrantResult:
        """Add prepaid credit in money to the customer's wallet (a top-up), in the
        currency of its plan. `grant_id` is the idempotency key: a retry with the
        same payload returns the original (`duplicate`), another payload raises
        IdempotencyKeyConflict. Lower `priority` burns first; then the soonest
        `expire_time`; `meter_slugs` limits what it pays for (empty: every meter)."""
        request = requests.grant_wallet_credit(
            customer_id,
            amount,
            currency,
            grant_id=grant_id,
            category=category,
            priority=priority,
            effective_time=effective_time,
            expire_time=expire_time,
            meter_slugs=meter_slugs,
            reason=reason,
        )
        return models.WalletGrantResult.from_proto(self.call("GrantWalletCredit", request, timeout=timeout))

    def get_wallet(
        self, customer_id: str, *, include_inactive: bool = False, timeout: float | None = None
    ) -> models.Wallet:
        """The customer's wallet: the credit available now, grant by grant in burn
        order (with `include_inactive`, also expired and used-up grants)."""
        request = wallets_pb2.GetWalletRequest(customer_id=customer_id, include_inactive=include_inactive)
        return models.Wallet.from_proto((self.call("GetWallet", request, timeout=timeout)).wallet)

    def list_grants(
        self, customer_id: str, meter_slug: str = "", *, include_expired: bool = False, timeout: float | None = None
    ) -> tuple[models.Grant, ...]:
        """A customer's grants (of one meter, or all); expired ones only with `include_expired`."""
        request = requests.list_grants(customer_id, meter_slug, include_expired=include_expired)
        response = self.call("ListGrants", request, timeout=timeout)
        return tuple(models.Grant.from_proto(g) for g in response.grants)

    def reserve_usage(
        self,
        customer_id: str,
        meter_slug: str,
        quantity: Quantity,
        *,
        reservation_id: str,
        ttl: timedelta | None = None,
        timeout: float | None = None,
    ) -> models.ReserveResult:
        """Hold `quantity` of a meter before expensive work (ReserveUsage), once per
        `reservation_id`; the hold counts against the allowance until committed, released or
        past its `ttl` (the service's default when None). Raises LimitExceeded if it does not fit."""
        request = requests.reserve_usage(customer_id, meter_slug, quantity, reservation_id=reservation_id, ttl=ttl)
        return models.ReserveResult.from_proto(self.call("ReserveUsage", request, timeout=timeout))

    def commit_reservation(
        self,
        customer_id: str,
        reservation_id: str,
        quantity: Quantity | None = None,
        *,
        properties: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> models.CommitResult:
        """Record the work a hold covered: `quantity` (at most the held amount; all of it when
        None) becomes a usage event, the rest of the hold is freed. Idempotent."""
        request = requests.commit_reservation(customer_id, reservation_id, quantity, properties=properties)
        return models.CommitResult.from_proto(self.call("CommitReservation", request, timeout=timeout))

    def release_reservation(
        self, customer_id: str, reservation_id: str, *, timeout: float | None = None
    ) -> models.ReleaseResult:
        """Free a hold without recording anything. Idempotent."""
        request = requests.release_reservation(customer_id, reservation_id)
        return models.ReleaseResult.from_proto(self.call("ReleaseReservation", request, timeout=timeout))

    # --- customers, bills, invoices -------------------------------------------------------------

    def upsert_customer(
        self,
        customer_id: str,
        plan_slug: str,
        *,
        billing_anchor: datetime | None = None,
        timeout: float | None = None,
    ) -> models.UpsertResult:
        """Create a customer on `plan_slug`, or move it to that plan (UpsertCustomer);
        `billing_anchor` (default: now, on creation) fixes when its periods start, once."""
        request = requests.upsert_customer(customer_id, plan_slug, billing_anchor=billing_anchor)
        return models.UpsertResult.from_proto(self.call("UpsertCustomer", request, timeout=timeout))

    def get_customer(self, customer_id: str, *, timeout: float | None = None) -> models.Customer:
        """A customer: its plan and billing anchor (NotFound if there is none)."""
        response = self.call("GetCustomer", requests.get_customer(customer_id), timeout=timeout)
        return models.Customer.from_proto(response.customer)

    def list_customers(
        self, *, plan_slug: str = "", page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> models.CustomerPage:
        """One page of customers by customer id (byte order), of `plan_slug` or of every plan.

        `page_size` is 1 to 1000 (0: 100). Pass the page's `next_page_token` as `page_token`,
        with the same `plan_slug`, for the next page; it is empty on the last page. Needs the
        reader role."""
        request = requests.list_customers(plan_slug=plan_slug, page_size=page_size, page_token=page_token)
        return models.CustomerPage.from_proto(self.call("ListCustomers", request, timeout=timeout))

    def get_catalog(self, *, timeout: float | None = None) -> models.Catalog:
        """The catalog the answering server serves with: meters, prices (the built-in no-charge
        ones included) and plans with every term, its revision and when it was loaded. Needs
        the reader role, without a meter restriction."""
        return models.Catalog.from_proto(self.call("GetCatalog", requests.get_catalog(), timeout=timeout))

    def estimate_bill(
        self,
        customer_id: str,
        *,
        period_time: datetime | None = None,
        what_if_plan_slug: str = "",
        timeout: float | None = None,
    ) -> models.Bill:
        """The bill of the period containing `period_time` (default: now) so far: one line per
        priced meter, included units, tiers and totals in exact decimal money. With
        `what_if_plan_slug`, `Bill.what_if` also prices the same usage on that plan ("what would
        this customer pay on plan Y"); an unknown plan raises NotFound."""
        request = requests.estimate_bill(customer_id, period_time=period_time, what_if_plan_slug=what_if_plan_slug)
        return models.Bill.from_proto(self.call("EstimateBill", request, timeout=timeout))

    def list_invoices(
        self,
        customer_id: str,
        *,
        status: InvoiceStatus = InvoiceStatus.UNSPECIFIED,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> models.InvoicePage:
        """A customer's invoices, newest period first (drafts, then finalized; or one `status`); paged."""
        request = requests.list_invoices(customer_id, status=status, page_size=page_size, page_token=page_token)
        return models.InvoicePage.from_proto(self.call("ListInvoices", request, timeout=timeout))

    def get_invoice(self, invoice_id: str, *, timeout: float | None = None) -> models.Invoice:
        """One invoice with its lines (NotFound if there is none)."""
        response = self.call("GetInvoice", requests.get_invoice(invoice_id), timeout=timeout)
        return models.Invoice.from_proto(response.invoice)

    def issue_credit_note(
        self,
        customer_id: str,
        invoice_id: str,
        *,
        credit_note_id: str,
        reason: CreditNoteReason,
        memo: str = "",
        lines: Sequence[CreditLine] = (),
        whole_invoice: bool = False,
        timeout: float | None = None,
    ) -> models.IssueCreditNoteResult:
        """Credit a finalized invoice: amounts on some of its `lines` (each a meter and price of
        the invoice), or with `whole_invoice=True` whatever remains of its total. `credit_note_id`
        is the idempotency key: a retry with the same arguments returns the original note
        (`duplicate` True); other arguments raise IdempotencyKeyConflict. More than was invoiced
        raises CreditNoteExceedsInvoiced, an invoice not finalized yet InvoiceNotFinalized."""
        request = requests.issue_credit_note(
            customer_id,
            invoice_id,
            credit_note_id=credit_note_id,
            reason=reason,
            memo=memo,
            lines=lines,
            whole_invoice=whole_invoice,
        )
        return models.IssueCreditNoteResult.from_proto(self.call("IssueCreditNote", request, timeout=timeout))

    # --- notifications --------------------------------------------------------------------------

    def watch_notifications(
        self, cursor: str = "", *, types: Sequence[NotificationType] = (), customer_id: str = ""
    ) -> Generator[models.Notification, None, None]:
        """The outbox, from `cursor` (or from now), for as long as the caller iterates. A
        broken stream is resumed after the last notification received, with the retry
        policy's backoff; its attempt count starts again with every notification."""
        metadata = self.connection.metadata()
        failures = 0
        while True:
            request = requests.watch_notifications(cursor, types=types, customer_id=customer_id)
            stream = self.stub.WatchNotifications(request, metadata=metadata, wait_for_ready=self.wait_for_ready)
            try:
                for message in stream:
                    failures = 0
                    notification = models.Notification.from_proto(message.notification)
                    cursor = notification.cursor
                    yield notification
                return
            except grpc.RpcError as exc:
                error: MeteringError = error_from_rpc(exc, target=self.connection.target)
                reached = not isinstance(error, Unreachable)
                if not should_retry(error.code, closed_locally=self._closed, reason=error.reason, reached=reached):
                    raise error from None
            finally:
                stream.cancel()  # type: ignore[no-untyped-call]
            failures += 1
            delay = backoff_delay(self.retry, failures, server_delay=error.details.retry_delay)
            if failures >= self.retry.max_attempts:
                raise exhausted(error, failures)
            if self._on_retry is not None:
                self._on_retry(RetryNotice("WatchNotifications", failures, error.code, delay))
            time.sleep(delay)
