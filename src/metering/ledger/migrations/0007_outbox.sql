-- The outbox: notifications written in the same transaction as the change that
-- causes them, and the state of their webhook delivery.
--
-- Outbox order is (txid, seq): the id of the writing transaction, then the
-- row's sequence number. A sequence alone is no order a reader can follow with
-- a cursor: values are taken at insert, and a transaction that took seq 5 may
-- commit after one that took seq 6, so a reader past 6 would skip 5 forever.
-- Readers only read rows whose transaction id is below the oldest transaction
-- of this database still running (ledger/outbox.py, _HORIZON): every such
-- transaction has finished, so no
-- row at or before that point can appear later, and every row that appears
-- later has a larger txid than any row read so far.

CREATE TABLE notifications (
    customer_id     text        NOT NULL,
    seq             bigint      NOT NULL GENERATED ALWAYS AS IDENTITY,
    txid            xid8        NOT NULL DEFAULT pg_current_xact_id(),
    notification_id uuid        NOT NULL,
    type            text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- What makes a notification once-only: e.g. a meter, period and threshold.
    dedupe_key      text        NOT NULL,
    -- The type's payload fields (metering.notifications), decimals as strings.
    payload         jsonb       NOT NULL,
    PRIMARY KEY (customer_id, seq),
    CONSTRAINT notifications_dedupe_key UNIQUE (customer_id, dedupe_key)
);

-- Reading the outbox in order, past a cursor.
CREATE INDEX notifications_position_idx ON notifications (txid, seq);
-- Retention.
CREATE INDEX notifications_created_idx ON notifications (created_at);

-- Wakes the outbox's readers (LISTEN metering_outbox) when a transaction that
-- wrote notifications commits; a statement that wrote none notifies nobody, so
-- the common write pays no NOTIFY (whose commit takes a global lock).
CREATE FUNCTION notifications_wake() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM added) THEN
        PERFORM pg_notify('metering_outbox', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER notifications_wake AFTER INSERT ON notifications
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION notifications_wake();

-- One row per webhook endpoint (named in METERING_WEBHOOKS_FILE): how far its
-- scan of the outbox has come, and the lease of the one replica delivering to
-- it. Small and keyed by endpoint: a reference table on Citus.
CREATE TABLE webhook_cursors (
    endpoint    text        NOT NULL PRIMARY KEY,
    txid        xid8        NOT NULL,
    seq         bigint      NOT NULL,
    owner       text        NOT NULL,
    lease_until timestamptz NOT NULL
);

-- A notification an endpoint wants and has not been delivered yet (pending),
-- or gave up on (dead, a dead letter). Delivered rows are deleted.
CREATE TABLE webhook_deliveries (
    customer_id     text        NOT NULL,
    endpoint        text        NOT NULL,
    txid            xid8        NOT NULL,
    seq             bigint      NOT NULL,
    status          text        NOT NULL CHECK (status IN ('pending', 'dead')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    PRIMARY KEY (customer_id, endpoint, txid, seq),
    FOREIGN KEY (customer_id, seq) REFERENCES notifications (customer_id, seq)
);

-- The oldest pending delivery of each customer, per endpoint.
CREATE INDEX webhook_deliveries_pending_idx ON webhook_deliveries (endpoint, customer_id, txid, seq)
    WHERE status = 'pending';
-- The foreign key's lookups (retention deletes notifications).
CREATE INDEX webhook_deliveries_notification_idx ON webhook_deliveries (customer_id, seq);
CREATE INDEX webhook_deliveries_dead_idx ON webhook_deliveries (endpoint) WHERE status = 'dead';
