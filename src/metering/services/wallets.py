"""The service of wallets (prepaid credit in money): no gRPC, no SQL.

Grants go to the ledger's WalletStore; burns happen in the transactions that
record usage (metering.ledger.writer), decided by metering.domain.wallets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from metering.domain import wallets
from metering.domain.catalog import Meter, Plan
from metering.domain.decimals import ZERO
from metering.domain.errors import FieldViolation, InvalidArgument
from metering.domain.records import CustomerRecord
from metering.domain.wallets import CreditCategory, CreditGrant, WalletSummary
from metering.ledger.customers import CustomerStore
from metering.ledger.wallets import WalletStore
from metering.services.catalog import Catalogs
from metering.services.usage import BalanceQuery, BalanceReport, require_customer, utc_now


@dataclass(frozen=True, slots=True)
class WalletGrantCommand:
    """A GrantWalletCredit request, checked."""

    customer_id: str
    grant_id: str
    amount: Decimal
    currency: str
    category: CreditCategory
    priority: int
    effective_time: datetime | None  # None: now
    expire_time: datetime | None
    meters: tuple[Meter, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class WalletView:
    """A wallet as the RPCs answer it: its summary, and the plan's wallet terms."""

    summary: WalletSummary
    prepaid: bool
    low_threshold: Decimal | None
    read_at: datetime


@dataclass(frozen=True, slots=True)
class BalanceWallet:
    """What a wallet adds to CheckBalance: the wallet (None without one), and requested_allowed with credit counted."""

    view: WalletView | None
    requested_allowed: bool | None


@dataclass(frozen=True, slots=True)
class WalletGrantAnswer:
    """What GrantWalletCredit answers: the grant as stored, whether the call was a replay, and the wallet after."""

    grant: wallets.GrantBalance
    duplicate: bool
    wallet: WalletView


class Wallets:
    """Wallet grants and reads for callers."""

    def __init__(
        self, catalogs: Catalogs, ledger: CustomerStore, store: WalletStore, *, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self._catalogs = catalogs  # read once per call: a reload swaps the catalog whole
        self._ledger = ledger
        self._store = store
        self._clock = clock

    async def grant(self, command: WalletGrantCommand) -> WalletGrantAnswer:
        customer = await require_customer(self._ledger, command.customer_id)
        plan = self._catalogs.current.catalog.plan(customer.plan_slug)
        if command.currency != plan.currency:
            raise InvalidArgument(
                [FieldViolation("amount.currency_code", f"must be {plan.currency}, the currency of plan {plan.slug!r}")]
            )
        now = self._clock()
        effective = command.effective_time or now
        if command.expire_time is not None and command.expire_time <= effective:
            raise InvalidArgument([FieldViolation("expire_time", "must be after effective_time")])
        grant = CreditGrant(
            customer_id=command.customer_id,
            grant_id=command.grant_id,
            currency=command.currency,
            amount=command.amount,
            category=command.category,
            priority=command.priority,
            effective_at=effective,
            expires_at=command.expire_time,
            meters=tuple(sorted({meter.slug for meter in command.meters})),
            reason=command.reason,
            created_at=now,
        )
        outcome = await self._store.grant(grant, effective_given=command.effective_time is not None)
        view = await self._view(customer, plan, include_inactive=True)
        stored = outcome.grant
        remaining = next(
            (g.remaining for g in view.summary.grants if g.grant.grant_id == stored.grant_id), stored.amount
        )
        balance = wallets.GrantBalance(stored, remaining, stored.active_at(view.read_at))
        return WalletGrantAnswer(balance, outcome.duplicate, view)

    async def get(self, customer_id: str, *, include_inactive: bool) -> WalletView:
        customer = await require_customer(self._ledger, customer_id)
        plan = self._catalogs.current.catalog.plan(customer.plan_slug)
        return await self._view(customer, plan, include_inactive=include_inactive)

    async def for_balance(self, report: BalanceReport, query: BalanceQuery) -> BalanceWallet:
        """The wallet CheckBalance shows (None, and no SQL, for a customer without
        one on a plan that needs none), and on a prepaid plan whether the
        requested quantity's cost at the plan's price fits in the credit that
        can pay for it (with the unit limit's answer)."""
        catalog = self._catalogs.current.catalog  # the whole call's catalog
        plan = catalog.plan(report.plan_slug)
        if not report.has_wallet and not plan.prepaid:
            return BalanceWallet(None, report.requested_allowed)
        assert plan.currency is not None  # every plan has one (catalog check)
        stored = await self._store.read(report.customer_id)
        summary = wallets.summarize(report.customer_id, plan.currency, stored.wallet, stored.read_at)
        view = WalletView(
            WalletSummary(
                summary.customer_id, summary.currency, summary.available, _shown(summary.grants, stored.read_at)
            ),
            plan.prepaid,
            plan.credits_low_threshold,
            stored.read_at,
        )
        allowed = report.requested_allowed
        if plan.prepaid and allowed and query.requested is not None and query.meter is not None:
            balance = report.balances[0]
            price = catalog.price(balance.terms.price)
            cost = wallets.requested_cost(
                price,
                balance.terms.included,
                plan.currency,
                balance.figures.used,
                query.requested,
                query.meter.aggregation,
            )
            wallet = stored.wallet
            available = ZERO if wallet is None else wallet.available(query.meter.slug, report.as_of, plan.currency)
            allowed = cost <= 0 or cost <= available
        return BalanceWallet(view, allowed)

    async def _view(self, customer: CustomerRecord, plan: Plan, *, include_inactive: bool) -> WalletView:
        assert plan.currency is not None  # every plan has one (catalog check)
        stored = await self._store.read(customer.customer_id)
        summary = wallets.summarize(customer.customer_id, plan.currency, stored.wallet, stored.read_at)
        if not include_inactive:
            summary = WalletSummary(
                summary.customer_id, summary.currency, summary.available, _shown(summary.grants, stored.read_at)
            )
        return WalletView(summary, plan.prepaid, plan.credits_low_threshold, stored.read_at)


def _shown(grants: Sequence[wallets.GrantBalance], at: datetime) -> list[wallets.GrantBalance]:
    """Grants with credit left that are active now or will be (not expired, not used up)."""
    return [g for g in grants if g.remaining > 0 and (g.grant.expires_at is None or at < g.grant.expires_at)]
