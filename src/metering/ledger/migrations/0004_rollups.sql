-- Hourly rollups: what usage queries and bills read for whole hours, written
-- in the same transaction as the events they summarise (metering.ledger.rollups).

-- One row per customer, meter, UTC hour, price and value of the meter's
-- declared dimensions, with what every aggregation needs to stay exact:
-- SUM and COUNT add, MAX keeps the max, LATEST keeps the value of the latest
-- event by (event_time, event_id), the same order the events query uses.
-- A row exists only while at least one event of its bucket still counts.
CREATE TABLE usage_rollups (
    customer_id       text        NOT NULL,
    meter_slug        text        NOT NULL,
    hour              timestamptz NOT NULL,
    price_slug        text        NOT NULL,
    -- The event's values of the meter's declared dimensions ('{}' without any).
    dimensions        jsonb       NOT NULL,
    event_count       bigint      NOT NULL CHECK (event_count > 0),
    quantity_sum      numeric     NOT NULL,
    quantity_max      numeric     NOT NULL,
    latest_quantity   numeric     NOT NULL,
    latest_event_time timestamptz NOT NULL,
    latest_event_id   uuid        NOT NULL,
    PRIMARY KEY (customer_id, meter_slug, hour, price_slug, dimensions)
);

-- Exact distinct counting for UNIQUE_COUNT meters: each value seen in a
-- bucket with the number of events that carry it (not an estimate).
CREATE TABLE usage_rollup_values (
    customer_id text        NOT NULL,
    meter_slug  text        NOT NULL,
    hour        timestamptz NOT NULL,
    price_slug  text        NOT NULL,
    dimensions  jsonb       NOT NULL,
    value       text        NOT NULL,
    event_count bigint      NOT NULL CHECK (event_count > 0),
    PRIMARY KEY (customer_id, meter_slug, hour, price_slug, dimensions, value)
);

-- What the rollups of each meter were built with. A meter whose declared
-- dimensions (or counted property) differ from the catalog's is rebuilt from
-- the events at start-up. Small and the same for everyone: on Citus a
-- reference table.
CREATE TABLE rollup_layouts (
    meter_slug      text   NOT NULL PRIMARY KEY,
    dimensions      text[] NOT NULL,
    unique_property text
);
