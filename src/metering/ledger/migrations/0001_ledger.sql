-- The usage ledger. Every table and every unique index starts with customer_id,
-- so the schema distributes unchanged on Citus with customer_id as the
-- distribution column, and no write touches more than one customer.

CREATE TABLE customers (
    customer_id     text        NOT NULL PRIMARY KEY,
    plan_slug       text        NOT NULL,
    billing_anchor  timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Append-only: one row per accepted event, never updated or deleted.
CREATE TABLE usage_events (
    customer_id          text        NOT NULL REFERENCES customers (customer_id),
    event_id             uuid        NOT NULL,
    transaction_id       text        NOT NULL,
    meter_slug           text        NOT NULL,
    price_slug           text        NOT NULL,
    -- The price the caller named, NULL when it named the meter: part of the
    -- payload a replay is compared with.
    requested_price_slug text,
    quantity             numeric     NOT NULL CHECK (quantity >= 0),
    event_time           timestamptz NOT NULL,
    -- Start of the counter period the event was counted in.
    period_start         timestamptz NOT NULL,
    recorded_at          timestamptz NOT NULL DEFAULT now(),
    properties           jsonb       NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (customer_id, event_id),
    -- Exactly once: one event per transaction id per customer, forever.
    CONSTRAINT usage_events_transaction_id_key UNIQUE (customer_id, transaction_id)
);

CREATE INDEX usage_events_meter_time_idx ON usage_events (customer_id, meter_slug, event_time);

-- One row per customer, meter and period: the aggregate a limit is checked
-- against. The row lock serialises every decision for that meter.
CREATE TABLE meter_counters (
    customer_id        text        NOT NULL REFERENCES customers (customer_id),
    meter_slug         text        NOT NULL,
    period_start       timestamptz NOT NULL,
    period_end         timestamptz,
    used               numeric     NOT NULL DEFAULT 0,
    event_count        bigint      NOT NULL DEFAULT 0,
    -- For LATEST meters: the event that set `used`.
    latest_event_time  timestamptz,
    latest_event_id    uuid,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, meter_slug, period_start)
);

-- Distinct property values seen per period, for UNIQUE_COUNT meters.
CREATE TABLE meter_unique_values (
    customer_id    text        NOT NULL,
    meter_slug     text        NOT NULL,
    period_start   timestamptz NOT NULL,
    value          text        NOT NULL,
    first_event_id uuid        NOT NULL,
    PRIMARY KEY (customer_id, meter_slug, period_start, value),
    FOREIGN KEY (customer_id, meter_slug, period_start)
        REFERENCES meter_counters (customer_id, meter_slug, period_start)
);
