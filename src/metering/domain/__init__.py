"""The domain: pure rules, standard library only, no I/O.

Nothing here imports asyncio, asyncpg, grpc, httpx or prometheus, or touches a
file or the network; every decision that needs no I/O lives here, so it is
tested without a database (tests/unit). The import contract in pyproject.toml
keeps it so.
"""
