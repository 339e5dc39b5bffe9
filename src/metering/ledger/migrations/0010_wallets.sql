-- Wallets: prepaid credit in money (metering.domain.wallets, metering.ledger.wallets).

-- Set (once, never unset) by the first wallet grant: the writer reads it with the
-- customer row and touches no wallet table for a customer without one.
ALTER TABLE customers ADD COLUMN has_wallet boolean NOT NULL DEFAULT false;

-- One row per customer with a wallet: the row every burn and grant locks
-- (FOR UPDATE, after the counter rows), and the generation that re-arms the
-- credits.low / credits.exhausted notifications at each top-up.
CREATE TABLE wallets (
    customer_id text        PRIMARY KEY REFERENCES customers (customer_id),
    generation  bigint      NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Credit grants: amount is what was given, remaining what is left (the amount
-- less the net burns, which wallet_spend keeps per priced quantity; the audit
-- checks that they agree).
CREATE TABLE credit_grants (
    customer_id  text        NOT NULL REFERENCES wallets (customer_id),
    grant_id     text        NOT NULL,
    currency     text        NOT NULL,
    amount       numeric     NOT NULL CHECK (amount > 0),
    remaining    numeric     NOT NULL CHECK (remaining >= 0 AND remaining <= amount),
    category     text        NOT NULL CHECK (category IN ('paid', 'promotional')),
    priority     integer     NOT NULL,
    effective_at timestamptz NOT NULL,
    expires_at   timestamptz CHECK (expires_at IS NULL OR expires_at > effective_at),
    meters       text[]      NOT NULL DEFAULT '{}',
    reason       text        NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, grant_id)
);

-- The priced quantity of a customer's meter in a billing period at one price
-- (kept only for customers with a wallet or a prepaid plan): its aggregate, the
-- exact cost charged so far, and what each grant paid of it, net of credit given
-- back (grant id -> exact amount): the burns. An invoice's credit applied per
-- grant is the sum of these over the billing period's rows.
CREATE TABLE wallet_spend (
    customer_id       text        NOT NULL REFERENCES customers (customer_id),
    meter_slug        text        NOT NULL,
    period_start      timestamptz NOT NULL,
    price_slug        text        NOT NULL,
    used              numeric     NOT NULL,
    event_count       bigint      NOT NULL,
    latest_event_time timestamptz,
    latest_event_id   uuid,
    charged           numeric     NOT NULL,
    burned            jsonb       NOT NULL DEFAULT '{}',
    PRIMARY KEY (customer_id, meter_slug, period_start, price_slug)
);

-- The credit applied per grant, as the invoice was finalized (immutable like the rest).
ALTER TABLE invoices ADD COLUMN credits_applied jsonb NOT NULL DEFAULT '[]';
