"""The MeteringService servicer: decode, validate, call the domain, encode.

Kept thin on purpose: rules live in validation, the engine, limits and the
ledger; failures are mapped to statuses by the interceptor (api.errors).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, TypeAlias

import grpc

from metering import metrics as m
from metering.api import convert, validation
from metering.api.paging import encode_token
from metering.decimals import ZERO
from metering.engine import MeteringEngine, UsageCommand
from metering.errors import LimitExceeded, TransactionConflict
from metering.reporting import Reporting
from metering.v1 import billing_pb2, customer_pb2, events_pb2, metering_service_pb2_grpc, usage_pb2

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class MeteringServicer(metering_service_pb2_grpc.MeteringServiceServicer):
    def __init__(
        self, engine: MeteringEngine, reporting: Reporting, metrics: m.Metrics, *, backfill_window: timedelta
    ) -> None:
        self._engine = engine
        self._reporting = reporting
        self._metrics = metrics
        self._backfill_window = backfill_window

    async def RecordUsage(  # noqa: N802 - gRPC method name
        self, request: usage_pb2.RecordUsageRequest, context: Context
    ) -> usage_pb2.RecordUsageResponse:
        command = validation.record_usage(
            request, self._engine.catalog, now=self._engine.now(), backfill_window=self._backfill_window
        )
        try:
            result = await self._engine.record_usage(command)
        except TransactionConflict:
            self._count_event(command, m.PAYLOAD_CONFLICT)
            raise
        except LimitExceeded as exc:
            self._count_event(command, m.REJECTED)
            self._metrics.limit_rejections.labels(exc.meter, exc.plan).inc()
            raise
        if result.duplicate:
            self._count_event(command, m.DUPLICATE)
        else:
            self._count_event(command, m.RECORDED)
            self._metrics.quantity.labels(command.meter.slug).inc(float(result.event.quantity))
            if result.overage > ZERO:
                self._metrics.overage.labels(command.meter.slug, result.plan_slug).inc(float(result.overage))
        return convert.record_usage_response(result)

    async def CheckBalance(  # noqa: N802
        self, request: usage_pb2.CheckBalanceRequest, context: Context
    ) -> usage_pb2.CheckBalanceResponse:
        query = validation.check_balance(request, self._engine.catalog)
        return convert.check_balance_response(await self._engine.check_balance(query))

    async def GetUsage(  # noqa: N802
        self, request: usage_pb2.GetUsageRequest, context: Context
    ) -> usage_pb2.GetUsageResponse:
        page = await self._reporting.get_usage(validation.get_usage(request, self._engine.catalog))
        response = usage_pb2.GetUsageResponse(rows=[convert.usage_row(row) for row in page.rows])
        if page.next_cursor is not None:
            response.next_page_token = encode_token(request, convert.usage_cursor(page.next_cursor))
        return response

    async def ListUsageEvents(  # noqa: N802
        self, request: events_pb2.ListUsageEventsRequest, context: Context
    ) -> events_pb2.ListUsageEventsResponse:
        page = await self._reporting.list_events(validation.list_usage_events(request, self._engine.catalog))
        response = events_pb2.ListUsageEventsResponse(events=[convert.usage_event(e) for e in page.events])
        if page.next_before is not None:
            response.next_page_token = encode_token(request, convert.events_cursor(page.next_before))
        return response

    async def EstimateBill(  # noqa: N802
        self, request: billing_pb2.EstimateBillRequest, context: Context
    ) -> billing_pb2.EstimateBillResponse:
        customer_id, period_time = validation.estimate_bill(request)
        return convert.bill(await self._reporting.estimate_bill(customer_id, period_time))

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

    def _count_event(self, command: UsageCommand, outcome: str) -> None:
        self._metrics.events.labels(command.meter.slug, outcome).inc()
