-- Invoices: every billing period of every customer closes into one invoice that
-- never changes. Keyed by customer_id first, like every table (Citus).

-- Per customer, where closing stands. Billing periods close in order, oldest
-- first, one at a time:
-- * closed_through: the end of the last finalized period (NULL: none yet). An
--   event before it belongs to a finalized invoice and is refused.
-- * closing_period_end: the end of the oldest period not finalized yet; the
--   closer finds due customers by it (closing_period_end + grace <= now).
ALTER TABLE customers
    ADD COLUMN closed_through     timestamptz,
    ADD COLUMN closing_period_end timestamptz;

-- The first period of existing customers ends a month after their anchor (in
-- UTC, clamped to the month's last day, as metering.periods computes it).
UPDATE customers
   SET closing_period_end = ((billing_anchor AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC';

ALTER TABLE customers ALTER COLUMN closing_period_end SET NOT NULL;

-- The closer's scan for due customers (not unique, so not keyed by customer:
-- on Citus it is a per-shard index that a cross-shard read uses).
CREATE INDEX customers_closing_idx ON customers (closing_period_end, customer_id);

-- One row per finalized invoice. Drafts are not stored: during the grace period
-- EstimateBill computes them from the ledger.
CREATE TABLE invoices (
    customer_id   text        NOT NULL REFERENCES customers (customer_id),
    -- Derived from (customer_id, period_start) (metering.closing.invoice_id_for),
    -- so every replica names the same invoice the same way.
    invoice_id    uuid        NOT NULL,
    -- 1, 2, 3... per customer, in period order.
    number        bigint      NOT NULL CHECK (number > 0),
    plan_slug     text        NOT NULL,
    period_start  timestamptz NOT NULL,
    period_end    timestamptz NOT NULL CHECK (period_end > period_start),
    currency      text        NOT NULL,
    subtotal      numeric     NOT NULL,
    credits       numeric     NOT NULL,
    total         numeric     NOT NULL,
    -- Exactly the lines EstimateBill gave for the period when it was finalized
    -- (meter, price, model, quantities, tiers, amounts as exact decimal
    -- strings): an invoice reads the same after the catalog changes.
    lines         jsonb       NOT NULL,
    status        text        NOT NULL DEFAULT 'finalized' CHECK (status = 'finalized'),
    finalized_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, invoice_id),
    -- One invoice per customer and period, forever, whatever the replicas do.
    CONSTRAINT invoices_period_key UNIQUE (customer_id, period_start),
    CONSTRAINT invoices_number_key UNIQUE (customer_id, number)
);

-- GetInvoice names only the invoice id.
CREATE INDEX invoices_id_idx ON invoices (invoice_id);

-- A finalized invoice never changes: the database refuses it, whatever the client.
CREATE FUNCTION invoices_are_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'invoice % is finalized: invoices are never updated or deleted', OLD.invoice_id
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER invoices_immutable BEFORE UPDATE OR DELETE ON invoices
    FOR EACH ROW EXECUTE FUNCTION invoices_are_immutable();
