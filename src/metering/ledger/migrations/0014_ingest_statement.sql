-- A cheaper ledger statement (docs/benchmarks.md, "PostgreSQL's CPU per event").
--
-- 1. No foreign-key check per event. Every writer of usage_events and
--    meter_counters (metering.ledger.usage for batches, metering.ledger.steps
--    for the other paths) first reads the customer's row FOR SHARE and refuses
--    an unknown customer, and holds that lock to its commit; no path deletes a
--    customer. The check of usage_events.customer_id and
--    meter_counters.customer_id against customers was one more index probe and
--    row lock per row (pg_stat_statements: one `SELECT 1 FROM ONLY customers
--    ... FOR KEY SHARE` per event and per counter, 1,100 per batch of 1,000),
--    proving what the writer's own lock already proves. The audit
--    (metering.ledger.audit, orphan_rows) checks the invariant instead.
--
-- 2. Room for HOT updates on the rows every batch updates in place: a counter
--    row per customer and meter, a rollup bucket per customer, meter and hour.
--    Neither update changes an indexed column, so with free space on the page
--    the new version stays on it and no index entry is written. A fillfactor
--    applies to the pages written after it is set (a table rewrite, e.g.
--    VACUUM FULL in a quiet hour, applies it to the old ones); counters and
--    buckets are per period and per hour, so new ones arrive on new pages.
--
-- Every index on usage_events, and the queries that need it (none is dropped):
--   usage_events_pkey (customer_id, event_id): the target of usage_voids'
--       foreign key, the void's join (EVENT_FROM) and the audit's committed
--       reservations without their event.
--   usage_events_transaction_id_key (customer_id, transaction_id): exactly
--       once (the insert's ON CONFLICT guard) and the replay lookup of every
--       batch (metering.ledger.usage.existing).
--   usage_events_meter_time_id_idx (customer_id, meter_slug, event_time,
--       event_id): GetUsage's partial hours and windows, ListUsageEvents of
--       one meter (keyset on time, id), the counter recomputed after a void,
--       a meter's rollup rebuild, wallet re-pricing.
--   usage_events_time_id_idx (customer_id, event_time, event_id):
--       ListUsageEvents across meters (keyset on time, id).
-- Time partitioning is not used: a unique index on a partitioned table must
-- contain the partition key, and exactly once is one transaction id per
-- customer forever, across every time range.

ALTER TABLE usage_events DROP CONSTRAINT IF EXISTS usage_events_customer_id_fkey;
ALTER TABLE meter_counters DROP CONSTRAINT IF EXISTS meter_counters_customer_id_fkey;

ALTER TABLE meter_counters SET (fillfactor = 50);
ALTER TABLE usage_rollups SET (fillfactor = 70);
