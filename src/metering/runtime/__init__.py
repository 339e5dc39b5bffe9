"""The composition root: builds every part once and runs the process's lifecycle
(serve, the worker supervisor, reload on SIGHUP, the embedded PostgreSQL)."""
