"""MeteringClient: every RPC of metering.v1 as a typed blocking method, on grpc's sync channel.

The same calls, results, retries and errors as AsyncMeteringClient (aio.py), for
threaded or synchronous code.

Each call has a deadline (`timeout`, per attempt) and is retried by the
client's RetryPolicy when it got no answer, resending the very same request
message. Refusals raise the exceptions of metering.client.errors.
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
from metering.client.errors import MeteringError, error_from_rpc, exhausted
from metering.client.models import EnforcementMode, InvoiceStatus, NotificationType, WindowSize
from metering.client.requests import Quantity, UsageRecord
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
    """A client of metering.v1.MeteringService for blocking code.

    `with MeteringClient(Connection.from_env()) as client: ...`
    """

    def __init__(
        self,
        connection: Connection | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        wait_for_ready: bool = True,
        on_retry: Callable[[RetryNotice], None] | None = None,
    ) -> None:
        self.connection = connection or Connection.from_env()
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.wait_for_ready = wait_for_ready  # wait for a restarting server (within the deadline)
        self._on_retry = on_retry
        self._channel = self.connection.sync_channel()
        self.stub = metering_service_pb2_grpc.MeteringServiceStub(self._channel)  # raw access
        self._closed = False

    def __enter__(self) -> MeteringClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        self._channel.close()

    # --- the retry loop -------------------------------------------------------------------------

    def _retrying(self, method: str, timeout: float | None, attempt: Callable[[float], R]) -> R:
        started = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            try:
                return attempt(attempt_timeout(self.retry, timeout, time.monotonic() - started))
            except grpc.RpcError as exc:
                error = error_from_rpc(exc)
                if not should_retry(error.code, closed_locally=self._closed, reason=error.reason):
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
        meter_slug: str,
        quantity: Quantity | None = None,
        *,
        transaction_id: str,
        price_slug: str = "",
        event_time: datetime | None = None,
        properties: Mapping[str, str] | None = None,
        enforcement: EnforcementMode = EnforcementMode.ENFORCE_LIMIT,
        timeout: float | None = None,
    ) -> models.RecordResult:
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
        request = requests.void_usage(customer_id, transaction_id, reason)
        return models.VoidResult.from_proto(self.call("VoidUsage", request, timeout=timeout))

    def check_balance(
        self,
        customer_id: str,
        meter_slug: str = "",
        *,
        requested: Quantity | None = None,
        timeout: float | None = None,
    ) -> models.BalanceReport:
        request = requests.check_balance(customer_id, meter_slug, requested=requested)
        return models.BalanceReport.from_proto(self.call("CheckBalance", request, timeout=timeout))

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
        request = requests.commit_reservation(customer_id, reservation_id, quantity, properties=properties)
        return models.CommitResult.from_proto(self.call("CommitReservation", request, timeout=timeout))

    def release_reservation(
        self, customer_id: str, reservation_id: str, *, timeout: float | None = None
    ) -> models.ReleaseResult:
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
        request = requests.upsert_customer(customer_id, plan_slug, billing_anchor=billing_anchor)
        return models.UpsertResult.from_proto(self.call("UpsertCustomer", request, timeout=timeout))

    def get_customer(self, customer_id: str, *, timeout: float | None = None) -> models.Customer:
        response = self.call("GetCustomer", requests.get_customer(customer_id), timeout=timeout)
        return models.Customer.from_proto(response.customer)

    def estimate_bill(
        self, customer_id: str, *, period_time: datetime | None = None, timeout: float | None = None
    ) -> models.Bill:
        request = requests.estimate_bill(customer_id, period_time=period_time)
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
        request = requests.list_invoices(customer_id, status=status, page_size=page_size, page_token=page_token)
        return models.InvoicePage.from_proto(self.call("ListInvoices", request, timeout=timeout))

    def get_invoice(self, invoice_id: str, *, timeout: float | None = None) -> models.Invoice:
        response = self.call("GetInvoice", requests.get_invoice(invoice_id), timeout=timeout)
        return models.Invoice.from_proto(response.invoice)

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
                error: MeteringError = error_from_rpc(exc)
                if not should_retry(error.code, closed_locally=self._closed, reason=error.reason):
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
