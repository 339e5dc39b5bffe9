"""The exporter task inside `metering serve`: closed hours of the rollups
reported to Stripe Billing meter events, one event per customer, meter and
hour, with the official `stripe` library.

One replica exports at a time: the one holding a session advisory lock on
the connection it keeps for the job (a StripeExportSession of
metering.ledger.stripe). For each
customer's meter with work it:

1. resends an event left in flight by a crash, exactly as it was decided
   (Stripe dedupes on the identifier, so an event it already had is not
   counted twice), or abandons it once it is too old for Stripe;
2. reads the pair's hourly usage from the rollups and plans the next hours
   (metering.domain.stripe);
3. for each hour with whole units due: stores the event, sends it, and once
   Stripe acknowledged it advances the progress in the transaction that
   records the acknowledgement. A failure stops the pair there; it is retried
   on the next pass, with a backoff while failures go on.

Which pairs have work is asked once per closed hour (and at start-up): that
query also looks for changes to hours already exported, which reads every
exported hour's rollups of the mapped meters. In between, passes retry only
the pairs that failed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import stripe
from stripe.params.billing import MeterEventCreateParams

from metering.config.settings import Settings
from metering.config.stripe import StripeMapping
from metering.domain.catalog import Aggregation
from metering.domain.stripe import abandoned, closed_end, identifier, lag_seconds, plan_steps, reportable
from metering.ledger.stripe import ExportScope, Pair, PendingEvent, StripeExportSession, StripeExportStore
from metering.telemetry.metrics import STRIPE_FAILED, STRIPE_SENT, Metrics

log = logging.getLogger(__name__)

# Stripe's answer to an identifier it already has: the event is there, so the
# hour counts as acknowledged (whether Stripe answers that way or with a 200).
DUPLICATE_CODE = "resource_already_exists"
# The longest wait between passes while Stripe keeps failing.
MAX_BACKOFF = timedelta(minutes=5)


class StripeMeterEvents:
    """Sends meter events with the official library's v1 API."""

    def __init__(self, api_key: str, api_base: str, timeout: timedelta) -> None:
        # No library retries: a failed hour is retried by the next pass, with
        # the same identifier, so the library's own retry loop would only
        # hold the exporter's connection longer.
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base},
            max_network_retries=0,
            http_client=stripe.RequestsClient(timeout=timeout.total_seconds()),
        )

    async def send(self, event: PendingEvent, customer_key: str, value_key: str) -> None:
        """Raises stripe.StripeError unless Stripe has the event."""
        params: MeterEventCreateParams = {
            "event_name": event.event_name,
            "payload": {customer_key: event.stripe_customer_id, value_key: str(event.step.units)},
            "identifier": event.identifier,
            "timestamp": int(event.step.hour.timestamp()),
        }
        try:
            # The library's requests client blocks: a thread keeps the event loop serving.
            await asyncio.to_thread(self._client.v1.billing.meter_events.create, params)
        except stripe.StripeError as exc:
            if exc.http_status == 400 and exc.code == DUPLICATE_CODE:
                return
            raise


def describe(exc: stripe.StripeError) -> str:
    """A failure in words for the log. An authentication error's message
    quotes part of the key, so only its status is told."""
    if isinstance(exc, stripe.AuthenticationError):
        return f"HTTP {exc.http_status}: the API key was refused"
    status = f"HTTP {exc.http_status}" if exc.http_status else "no answer"
    code = f" {exc.code}" if exc.code else ""
    return f"{status}{code}: {type(exc).__name__}: {str(exc.user_message or exc)[:200]}"


class StripeExporter:
    """The background task that reports closed hours of usage to Stripe meter events. One replica
    exports at a time (an advisory lock); each event is stored before it is sent and resent as it
    was after a crash, so Stripe, which dedupes on its identifier, counts every hour exactly once."""

    def __init__(
        self,
        store: StripeExportStore,
        mapping: StripeMapping,
        settings: Settings,
        metrics: Metrics,
        sender: StripeMeterEvents,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._mapping = mapping
        self._metrics = metrics
        self._sender = sender
        self._clock = clock
        self._settle = settings.stripe_settle_delay
        self._interval = settings.stripe_interval.total_seconds()
        aggregations: dict[str, Aggregation] = {slug: m.meter.aggregation for slug, m in mapping.meters.items()}
        self._reasons_logged: set[str] = set()  # failures already logged in this pass
        self._scope = ExportScope.of(aggregations, list(mapping.customer_ids) if mapping.listed_only else None)
        for slug in mapping.meters:
            metrics.stripe_export_lag.labels(meter=slug).set(0)

    async def run(self) -> None:
        """Export while this replica holds the lock; wait for it otherwise.
        Runs until cancelled."""
        while True:
            try:
                async with self._store.session() as session:
                    if session is not None:
                        log.info("exporting usage to Stripe (meters: %s)", ", ".join(sorted(self._mapping.meters)))
                        await self._export(session)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database went away, or the lock was lost: start again
                log.warning("Stripe export interrupted: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(self._interval)

    async def _export(self, session: StripeExportSession) -> None:
        last_closed: datetime | None = None
        retry: dict[Pair, datetime] = {}  # pairs that failed, with their oldest hour not exported
        failures_in_row = 0
        while True:
            now = self._clock()
            closed = closed_end(now, self._settle)
            if closed != last_closed:
                pairs = await session.pairs_to_export(self._scope, closed, check_exported=True)
                last_closed = closed
            else:
                pairs = sorted(retry, key=lambda p: (p.customer_id, p.meter_slug))
            self._reasons_logged = set()
            retry = {}
            for pair in pairs:
                failed_at = await self._export_pair(session, pair, closed, now)
                if failed_at is not None:
                    retry[pair] = failed_at
            self._report_lag(retry)
            failures_in_row = failures_in_row + 1 if retry else 0
            backoff = min(self._interval * 2 ** min(failures_in_row, 16), MAX_BACKOFF.total_seconds())
            await asyncio.sleep(backoff if retry else self._interval)

    def _report_lag(self, failed: dict[Pair, datetime]) -> None:
        now = self._clock()
        for slug in self._mapping.meters:
            oldest = min((hour for pair, hour in failed.items() if pair.meter_slug == slug), default=None)
            self._metrics.stripe_export_lag.labels(meter=slug).set(lag_seconds(oldest, now, self._settle))

    async def _export_pair(
        self, session: StripeExportSession, pair: Pair, closed: datetime, now: datetime
    ) -> datetime | None:
        """Export what is due of one customer's meter; returns the hour it
        stopped at after a failure, None when it is up to date."""
        stripe_meter = self._mapping.meters[pair.meter_slug]
        state = await session.load_state(pair)
        if state.unlogged_skipped_hours:  # saved by a process stopped before it logged them
            await self._report_skips(session, pair, state.unlogged_skipped_hours)
        progress = state.progress
        pending = state.pending
        if pending is not None:
            if not reportable(pending.step.hour, now):
                after = abandoned(progress, pending.step)
                await session.abandon_event(pair, progress, pending, after)
                self._metrics.stripe_events_skipped.labels(meter=pair.meter_slug).inc()
                log.warning(
                    "customer %s meter %s: the event of %s became older than Stripe's 35 days before it was "
                    "acknowledged: not reported",
                    pair.customer_id,
                    pair.meter_slug,
                    pending.step.hour.isoformat(),
                )
                progress = after
            else:
                if not await self._send(pair, pending):
                    return pending.step.hour
                await session.acknowledge_event(pair, progress, pending)
                progress = pending.step.progress
        stripe_customer = self._mapping.stripe_customer(pair.customer_id)
        if stripe_customer is None:
            return None
        exported, usage = await session.hourly_usage(self._scope, pair, progress.exported_through, closed)
        steps = plan_steps(progress, exported_range_total=exported, usage=usage, closed_before=closed, now=now)
        saved = current = progress
        skipped = 0  # hours too old for Stripe passed over since `saved`
        unlogged = 0  # hours too old for Stripe saved in the progress (and counted there), not logged yet
        for step in steps:
            if step.units == 0:
                current = step.progress
                if step.skipped:
                    skipped += 1
                continue
            event = PendingEvent(
                step,
                identifier(self._mapping.identifier_prefix, pair.customer_id, pair.meter_slug, step.hour),
                stripe_meter.event_name,
                stripe_customer,
            )
            await session.decide_event(pair, saved, current, event, skipped)
            saved, skipped, unlogged = current, 0, unlogged + skipped
            if not await self._send(pair, event):
                await self._report_skips(session, pair, unlogged)
                return step.hour
            await session.acknowledge_event(pair, current, event)
            saved = current = step.progress
        await session.save_progress(pair, saved, current, skipped)
        await self._report_skips(session, pair, unlogged + skipped)
        return None

    async def _report_skips(self, session: StripeExportSession, pair: Pair, hours: int) -> None:
        """Log and count hours too old for Stripe that the saved progress has
        passed over. Their number is saved with the progress (the ledger's
        `unlogged_skipped_hours`) and cleared only once logged, so a process
        stopped in between (killed mid-send) leaves the line to the next
        exporter: written at least once, never lost."""
        if not hours:
            return
        log.warning(
            "customer %s meter %s: %d hours with usage are older than Stripe's 35 days: not reported",
            pair.customer_id,
            pair.meter_slug,
            hours,
        )
        self._metrics.stripe_events_skipped.labels(meter=pair.meter_slug).inc(hours)
        await session.skips_logged(pair, hours)

    async def _send(self, pair: Pair, event: PendingEvent) -> bool:
        stripe_meter = self._mapping.meters[pair.meter_slug]
        try:
            await self._sender.send(event, stripe_meter.customer_payload_key, stripe_meter.value_payload_key)
        except stripe.StripeError as exc:
            self._metrics.stripe_meter_events.labels(meter=pair.meter_slug, outcome=STRIPE_FAILED).inc()
            reason = describe(exc)
            if reason not in self._reasons_logged:  # once per pass, not once per customer
                self._reasons_logged.add(reason)
                log.warning(
                    "Stripe refused or did not answer a meter event of %s (retried): %s", pair.meter_slug, reason
                )
            return False
        self._metrics.stripe_meter_events.labels(meter=pair.meter_slug, outcome=STRIPE_SENT).inc()
        return True
