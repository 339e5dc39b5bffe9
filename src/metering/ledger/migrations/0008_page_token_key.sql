-- The key that signs page tokens (metering.api.page_tokens): one row, the same
-- for every replica, so a token issued by one is accepted by all. The first
-- process to start after this migration inserts a random key (INSERT ... ON
-- CONFLICT DO NOTHING, so replicas starting together keep the first one) and
-- every process reads it back (metering.ledger.page_token_key). A small
-- reference table with no customer, like rollup_layouts.
CREATE TABLE page_token_key (
    id         boolean     PRIMARY KEY DEFAULT true CHECK (id),
    key        bytea       NOT NULL CHECK (length(key) >= 32),
    created_at timestamptz NOT NULL DEFAULT now()
);
