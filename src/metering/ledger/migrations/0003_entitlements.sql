-- Entitlements: grants (credits), reservations (holds) and voids.

-- Units added to a meter's allowance while the grant is active.
CREATE TABLE grants (
    customer_id  text        NOT NULL REFERENCES customers (customer_id),
    grant_id     text        NOT NULL,
    meter_slug   text        NOT NULL,
    quantity     numeric     NOT NULL CHECK (quantity > 0),
    effective_at timestamptz NOT NULL,
    expires_at   timestamptz CHECK (expires_at IS NULL OR expires_at > effective_at),
    reason       text        NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, grant_id)
);

CREATE INDEX grants_meter_idx ON grants (customer_id, meter_slug, effective_at);

-- Holds on units of a meter in one period. A state machine, not the ledger:
-- held -> committed | released; a held row past expires_at is expired.
CREATE TABLE reservations (
    customer_id        text        NOT NULL REFERENCES customers (customer_id),
    reservation_id     text        NOT NULL,
    meter_slug         text        NOT NULL,
    period_start       timestamptz NOT NULL,
    quantity           numeric     NOT NULL CHECK (quantity > 0),
    status             text        NOT NULL CHECK (status IN ('held', 'committed', 'released')),
    expires_at         timestamptz NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    settled_at         timestamptz,
    committed_quantity numeric,
    event_id           uuid,
    PRIMARY KEY (customer_id, reservation_id)
);

CREATE INDEX reservations_held_idx ON reservations (customer_id, meter_slug, period_start)
    WHERE status = 'held';

-- Compensating entries: the event stays in usage_events, this row cancels it.
CREATE TABLE usage_voids (
    customer_id    text        NOT NULL,
    event_id       uuid        NOT NULL,
    transaction_id text        NOT NULL,
    reason         text        NOT NULL,
    voided_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, event_id),
    FOREIGN KEY (customer_id, event_id) REFERENCES usage_events (customer_id, event_id)
);
