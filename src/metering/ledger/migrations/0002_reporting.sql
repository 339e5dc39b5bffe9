-- Reporting: the plan history that prices past periods, and the indexes that
-- serve GetUsage and ListUsageEvents (keyset pagination on event time, id).

-- One row per plan a customer has been on, from the instant it took effect.
CREATE TABLE customer_plan_history (
    customer_id  text        NOT NULL REFERENCES customers (customer_id),
    effective_at timestamptz NOT NULL,
    plan_slug    text        NOT NULL,
    PRIMARY KEY (customer_id, effective_at)
);

INSERT INTO customer_plan_history (customer_id, effective_at, plan_slug)
SELECT customer_id, created_at, plan_slug FROM customers;

-- Aggregation per meter over a time range, and the per-meter event listing.
CREATE INDEX usage_events_meter_time_id_idx ON usage_events (customer_id, meter_slug, event_time, event_id);
DROP INDEX usage_events_meter_time_idx;

-- The listing across meters, newest first.
CREATE INDEX usage_events_time_id_idx ON usage_events (customer_id, event_time, event_id);
