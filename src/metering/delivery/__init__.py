"""Delivery of the outbox: webhooks (webhooks.py) and the watch stream's reader (stream.py)."""
