"""Outbound edges: the outbox delivered as webhooks, as the watch stream, and
the rollups exported to Stripe. They reach the database only through ledger/."""
