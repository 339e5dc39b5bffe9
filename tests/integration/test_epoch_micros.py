"""timestamp_from_micros against PostgreSQL: every bigint of epoch_micros comes
back as the same instant, over years 1 to 9999, in a session whose time zone
is not UTC (interval arithmetic there is calendar-aware for days, never for
seconds)."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import asyncpg

from metering.ledger.sql import epoch_micros, timestamp_from_micros

FIRST, LAST = datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


def test_every_instant_round_trips_exactly(database_url: str) -> None:
    generator = random.Random(20261202)
    span = (LAST - FIRST) // timedelta(microseconds=1)
    values = [FIRST, LAST, datetime(1970, 1, 1, tzinfo=UTC)]
    values += [datetime(1969, 12, 31, 23, 59, 59, 999999 - n, tzinfo=UTC) for n in range(3)]
    values += [FIRST + timedelta(microseconds=generator.randrange(span + 1)) for _ in range(50_000)]

    async def go() -> list[datetime]:
        conn = await asyncpg.connect(database_url, server_settings={"TimeZone": "America/New_York"})
        try:
            rows = await conn.fetch(
                f"SELECT {timestamp_from_micros('m')} FROM unnest($1::bigint[]) WITH ORDINALITY AS k (m, n) ORDER BY n",
                epoch_micros(values),
            )
        finally:
            await conn.close()
        return [row[0] for row in rows]

    assert asyncio.run(go()) == values
