-- The Stripe exporter's count of skipped hours (too old for Stripe) whose log
-- line is not written yet (metering.delivery.stripe). It grows in the
-- transaction that moves the progress past those hours and shrinks once the
-- line is written, so a process killed in between (mid-send, say) leaves it
-- for the next exporter to log: the line is written at least once.
ALTER TABLE stripe_export_progress
    ADD COLUMN unlogged_skipped_hours integer NOT NULL DEFAULT 0 CHECK (unlogged_skipped_hours >= 0);

-- What pairs_to_export looks for: the few rows with a line due.
CREATE INDEX stripe_export_progress_unlogged_idx ON stripe_export_progress (customer_id, meter_slug)
    WHERE unlogged_skipped_hours > 0;
