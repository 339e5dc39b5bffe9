-- One customer's notifications in the order their transactions committed
-- (metering.ledger.outbox, docs/notifications.md).
--
-- The outbox order stays (txid, seq) and readers still stop at the horizon,
-- the oldest transaction still running (0007). What changes is how a row gets
-- its position: no longer the writing transaction's id and a sequence value
-- taken whenever the insert ran, but, under a lock on the customer's head row
-- that the writing transaction holds until it commits:
--
--   txid = greatest(the writing transaction's id, the customer's last txid)
--   seq  = the next value of notifications_seq, drawn after that lock
--
-- Two transactions writing notifications of one customer take the head lock
-- in turn, and the second waits for the first to COMMIT (or roll back) before
-- it reads the head: so its txid is at least the first one's and its seq is
-- larger. Per customer, (txid, seq) order is commit order. Across customers
-- nothing is shared but a sequence (no lock): no global serialisation.
--
-- The horizon stays exact: txid is at least the writer's own id, so a row of
-- a transaction still running has a txid at or past the horizon, and a row
-- below it was committed by a transaction whose id is below it.

-- Per customer, the txid of its last notification. Keyed by customer (Citus).
CREATE TABLE notification_heads (
    customer_id text NOT NULL PRIMARY KEY,
    txid        xid8 NOT NULL
);

INSERT INTO notification_heads (customer_id, txid)
SELECT customer_id, max(txid) FROM notifications GROUP BY customer_id;

-- seq is drawn by the trigger, after the head lock (an identity would be
-- drawn before any trigger ran, in whatever order inserts happened).
ALTER TABLE notifications ALTER COLUMN seq DROP IDENTITY;
CREATE SEQUENCE notifications_seq OWNED BY notifications.seq;
SELECT setval('notifications_seq', coalesce(max(seq), 0) + 1, false) FROM notifications;
ALTER TABLE notifications ALTER COLUMN txid DROP DEFAULT;

CREATE FUNCTION notifications_position() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Waits for a transaction that wrote this customer's notifications and
    -- has not committed yet; then reads the head it committed.
    INSERT INTO notification_heads AS h (customer_id, txid)
    VALUES (NEW.customer_id, pg_current_xact_id())
    ON CONFLICT (customer_id) DO UPDATE SET txid = greatest(h.txid, EXCLUDED.txid)
    RETURNING h.txid INTO NEW.txid;
    NEW.seq := nextval('notifications_seq');
    RETURN NEW;
END
$$;

CREATE TRIGGER notifications_position BEFORE INSERT ON notifications
    FOR EACH ROW EXECUTE FUNCTION notifications_position();
