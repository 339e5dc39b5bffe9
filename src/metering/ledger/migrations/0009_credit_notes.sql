-- Credit notes: corrections of finalized invoices. The invoice never changes;
-- a credit note references it, is written once and never changed. Keyed by
-- customer_id first, like every table (Citus).
CREATE TABLE credit_notes (
    customer_id    text        NOT NULL,
    -- The caller's idempotency key (IssueCreditNoteRequest.credit_note_id).
    credit_note_id text        NOT NULL,
    invoice_id     uuid        NOT NULL,
    -- 1, 2, 3... per invoice, in the order issued (assigned under the
    -- invoice's row lock, metering.ledger.credit_notes).
    number         bigint      NOT NULL CHECK (number > 0),
    reason         text        NOT NULL,
    memo           text        NOT NULL,
    -- True: what remained of the invoice's total; lines is then empty.
    whole_invoice  boolean     NOT NULL,
    -- The invoice lines credited: [{"meter", "price", "amount"}], amounts as
    -- exact decimal strings, in the order requested.
    lines          jsonb       NOT NULL,
    currency       text        NOT NULL,
    amount         numeric     NOT NULL CHECK (amount > 0),
    issued_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, credit_note_id),
    CONSTRAINT credit_notes_number_key UNIQUE (customer_id, invoice_id, number),
    CONSTRAINT credit_notes_invoice_fkey FOREIGN KEY (customer_id, invoice_id)
        REFERENCES invoices (customer_id, invoice_id),
    CONSTRAINT credit_notes_whole_or_lines CHECK (whole_invoice = (jsonb_array_length(lines) = 0))
);

-- Never above what was invoiced is decided under the invoice's row lock by
-- the service (metering.domain.credit_notes) and checked by `metering audit`;
-- once written, a credit note never changes: the database refuses it.
CREATE FUNCTION credit_notes_are_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'credit note % is issued: credit notes are never updated or deleted', OLD.credit_note_id
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER credit_notes_immutable BEFORE UPDATE OR DELETE ON credit_notes
    FOR EACH ROW EXECUTE FUNCTION credit_notes_are_immutable();
