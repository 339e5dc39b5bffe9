-- The billing sync to Stripe (metering.stripe_sync, metering.ledger.stripe_export).

-- How far each customer's meter is exported: a running account of the closed
-- hours before exported_through (metering.stripe_sync.plan says what each
-- figure means). Advanced only after Stripe acknowledged the hour's meter
-- event, in the transaction that records the acknowledgement.
CREATE TABLE stripe_export_progress (
    customer_id      text        NOT NULL,
    meter_slug       text        NOT NULL,
    exported_through timestamptz NOT NULL,
    accounted_total  numeric     NOT NULL,
    skipped_total    numeric     NOT NULL,
    sent_units       numeric     NOT NULL CHECK (sent_units = trunc(sent_units) AND sent_units >= 0),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, meter_slug)
);

-- Every meter event decided, with the progress it leads to. It is written
-- before it is sent and acknowledged after Stripe answered, so an event
-- interrupted by a crash is sent again exactly as it was (same identifier,
-- same value, same timestamp), never recomputed from rollups that may have
-- changed meanwhile.
CREATE TABLE stripe_meter_events (
    customer_id        text        NOT NULL,
    meter_slug         text        NOT NULL,
    hour               timestamptz NOT NULL,
    identifier         text        NOT NULL,
    event_name         text        NOT NULL,
    stripe_customer_id text        NOT NULL,
    value              bigint      NOT NULL CHECK (value > 0),
    exported_through   timestamptz NOT NULL,
    accounted_total    numeric     NOT NULL,
    skipped_total      numeric     NOT NULL,
    sent_units         numeric     NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    acknowledged_at    timestamptz,
    -- Set instead when the event became too old for Stripe before it was acknowledged.
    abandoned_at       timestamptz,
    PRIMARY KEY (customer_id, meter_slug, hour)
);

-- At most one event in flight per customer and meter.
CREATE UNIQUE INDEX stripe_meter_events_pending ON stripe_meter_events (customer_id, meter_slug)
    WHERE acknowledged_at IS NULL AND abandoned_at IS NULL;
