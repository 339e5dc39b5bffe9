-- A batch's notifications are positioned as a set, by the statement that
-- inserts them (metering.ledger.outbox.enqueue), no longer row by row by the
-- `notifications_position` trigger (0011).
--
-- The rule of 0011 is unchanged: under a lock on the customer's head row that
-- the writing transaction holds until it commits,
--
--   txid = greatest(the writing transaction's id, the customer's last txid)
--   seq  = the next value of notifications_seq, drawn after that lock
--
-- What changes is who applies it. `enqueue` upserts the head rows of the
-- set's customers in one statement (a data-modifying WITH, in customer
-- order, as the trigger's row-by-row upserts were: no new deadlock cycle),
-- and only once every head of the set is locked (a sort over the join with
-- the heads' RETURNING rows: it cannot produce a row before it has read them
-- all) draws the rows' seq values, in the rows' order, and inserts them with
-- their head's txid. So: one head upsert per customer instead of one per
-- notification, and no PL/pgSQL call per row.
--
-- The trigger stays for a row inserted without a position (a replica of the
-- previous release during a rolling upgrade, which inserts without txid and
-- seq): it positions such a row exactly as before, under the same head lock,
-- so rows of both kinds of writer are in commit order per customer. The WHEN
-- condition is evaluated by the executor without calling the function: a row
-- that comes with its position costs nothing more.

DROP TRIGGER notifications_position ON notifications;

CREATE TRIGGER notifications_position BEFORE INSERT ON notifications
    FOR EACH ROW WHEN (NEW.txid IS NULL OR NEW.seq IS NULL) EXECUTE FUNCTION notifications_position();
