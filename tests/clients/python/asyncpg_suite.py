"""asyncpg against pgdyno (or PostgreSQL directly): CLIENTS concurrent
connections (asyncio tasks), in phases:

  cache-default  asyncpg's default statement cache: every query is a named
                 prepared statement (Parse+Describe in one round trip, then
                 Bind/Execute in later ones, so on different backends)
  cache-100      the same with statement_cache_size=100 given explicitly
  cache-2        statement_cache_size=2: the cache keeps evicting, so asyncpg
                 keeps closing and re-preparing statements
  pool           one asyncpg pool per client (max_size=1) with server_settings
                 (TimeZone, application_name); the pool runs RESET ALL on
                 every release, after which the startup settings must hold

Each client: fetchval/fetch/fetchrow with parameters, an explicit
conn.prepare() statement reused across transactions, an enum type (asyncpg
introspects it with its own prepared query), executemany in and out of
transactions, rolled-back transactions, expected errors, a server-side cursor
with prefetch (portals across round trips), COPY of records, and the
server_settings given at connect time. Every result is compared with the value
it must have.
"""

import asyncio
import json
import time

import asyncpg

from common import (
    CLIENTS,
    DBNAME,
    HOST,
    ITERS,
    PASSWORD,
    PHASES,
    PORT,
    TZ_OFFSETS,
    USER,
    CheckFailed,
    Results,
    check,
    tz_pair,
)

R = Results("asyncpg")
R.info = f", asyncpg {asyncpg.__version__}"
MOODS = ["sad", "ok", "happy"]


class Rollback(Exception):
    pass


async def connect(**kw):
    return await asyncpg.connect(host=HOST, port=PORT, user=USER, password=PASSWORD, database=DBNAME, **kw)


async def setup():
    conn = await connect()
    try:
        await conn.execute("DROP TABLE IF EXISTS apg_items, apg_many, apg_copy")
        await conn.execute("DROP TYPE IF EXISTS apg_mood")
        await conn.execute("CREATE TYPE apg_mood AS ENUM ('sad', 'ok', 'happy')")
        await conn.execute(
            "CREATE TABLE apg_items (phase text NOT NULL, client_id int NOT NULL, i int NOT NULL, j int NOT NULL, mood apg_mood)"
        )
        await conn.execute("CREATE TABLE apg_many (phase text NOT NULL, client_id int NOT NULL, k int NOT NULL, t text NOT NULL)")
        await conn.execute("CREATE TABLE apg_copy (phase text NOT NULL, client_id int NOT NULL, k int NOT NULL, note text)")
    finally:
        await conn.close()


async def run_phase(name, fn):
    if PHASES and name not in PHASES:
        return
    started = time.monotonic()

    async def body(cid):
        try:
            await asyncio.wait_for(fn(name, cid), timeout=180)
        except Exception as e:  # noqa: BLE001 - every failure is reported
            R.fail(name, cid, e)

    await asyncio.gather(*(body(cid) for cid in range(CLIENTS)))
    R.phase_done(name, started, CLIENTS)


async def client_ops(phase, cid, conn, tz, app, iters):
    """The per-client workload on one connection."""
    mul = await conn.prepare("SELECT $1::int * $2::int")
    many_total = 0
    for i in range(iters):
        check(await conn.fetchval("SELECT $1::int + $2::int", i, cid), i + cid, "fetchval sum")
        check(await mul.fetchval(i, cid), i * cid, "prepared statement fetchval")
        n = i % 6 + 1
        rows = await conn.fetch("SELECT g, g * $1::int AS m FROM generate_series(1, $2::int) g", cid, n)
        check([tuple(r) for r in rows], [(g, g * cid) for g in range(1, n + 1)], "fetch rows")
        row = await conn.fetchrow(
            "SELECT $1::text AS t, $2::int[] AS a, $3::jsonb AS j, $4::numeric * 2 AS d",
            f"c{cid}",
            [i, cid],
            json.dumps({"c": cid, "i": i}),
            i,
        )
        check((row["t"], row["a"], json.loads(row["j"]), int(row["d"])), (f"c{cid}", [i, cid], {"c": cid, "i": i}, 2 * i), "fetchrow")
        mood = MOODS[(cid + i) % 3]
        check(await conn.fetchval("SELECT $1::apg_mood::text", mood), mood, "enum parameter")
        check(await conn.fetchval("SELECT 'happy'::apg_mood"), "happy", "enum result")
        R.ok(6)

        # A transaction with executemany.
        async with conn.transaction():
            await conn.executemany(
                "INSERT INTO apg_items (phase, client_id, i, j, mood) VALUES ($1, $2, $3, $4, $5)",
                [(phase, cid, i, j, MOODS[j % 3]) for j in range(3)],
            )
            check(
                await conn.fetchval("SELECT count(*) FROM apg_items WHERE phase = $1 AND client_id = $2 AND j >= 0", phase, cid),
                (i + 1) * 3,
                "count in transaction",
            )
            check(await mul.fetchval(cid, 2), cid * 2, "prepared statement in transaction")
        R.ok(2)

        # executemany outside a transaction (asyncpg makes it atomic itself).
        await conn.executemany(
            "INSERT INTO apg_many (phase, client_id, k, t) VALUES ($1, $2, $3, $4)",
            [(phase, cid, i * 10 + k, f"t{k}") for k in range(i % 4 + 1)],
        )
        many_total += i % 4 + 1

        if i % 5 == 0:
            try:
                async with conn.transaction():
                    await conn.execute(
                        "INSERT INTO apg_items (phase, client_id, i, j) VALUES ($1, $2, $3, -1)", phase, cid, i
                    )
                    check(
                        await conn.fetchval("SELECT count(*) FROM apg_items WHERE phase = $1 AND client_id = $2 AND j = -1", phase, cid),
                        1,
                        "uncommitted row visible",
                    )
                    raise Rollback()
            except Rollback:
                pass
            check(
                await conn.fetchval("SELECT count(*) FROM apg_items WHERE phase = $1 AND client_id = $2 AND j = -1", phase, cid),
                0,
                "rolled-back row gone",
            )
            R.ok(2)

        if i % 10 == 3:
            try:
                await conn.fetchval("SELECT 1 / $1::int", 0)
                raise CheckFailed("1/0 did not fail")
            except asyncpg.DivisionByZeroError as e:
                check(e.sqlstate, "22012", "sqlstate")
            try:
                async with conn.transaction():
                    await conn.execute("INSERT INTO apg_items (phase, client_id, i, j) VALUES ($1, $2, $3, -2)", phase, cid, i)
                    await conn.fetchval("SELECT 1 / $1::int", 0)
                raise CheckFailed("1/0 in a transaction did not fail")
            except asyncpg.DivisionByZeroError:
                pass
            check(
                await conn.fetchval("SELECT count(*) FROM apg_items WHERE phase = $1 AND client_id = $2 AND j = -2", phase, cid),
                0,
                "row of failed transaction gone",
            )
            check(await mul.fetchval(3, 3), 9, "prepared statement after errors")
            R.ok(3)

        if i % 10 == 7:
            # A server-side cursor: one portal, fetched in several round trips.
            async with conn.transaction():
                got = [r[0] async for r in conn.cursor("SELECT g FROM generate_series(1, $1::int) g", 25 + cid, prefetch=7)]
            check(got, list(range(1, 26 + cid)), "cursor rows")
            async with conn.transaction():
                cur = await conn.cursor("SELECT g * $2::int FROM generate_series(1, $1::int) g", 30, cid)
                first = await cur.fetch(10)
                await cur.forward(5)
                rest = await cur.fetch(100)
            check([r[0] for r in first + rest], [g * cid for g in list(range(1, 11)) + list(range(16, 31))], "cursor fetch/forward")
            R.ok(2)

        if i % 10 == 9:
            check(await conn.fetchval("SHOW TimeZone"), tz, "TimeZone from server_settings")
            check(
                await conn.fetchval("SELECT extract(timezone from '2024-01-15 12:00:00+00'::timestamptz)::int"),
                TZ_OFFSETS[tz],
                "TimeZone offset",
            )
            check(await conn.fetchval("SELECT current_setting('application_name')"), app, "application_name")
            check(conn.get_settings().TimeZone, tz, "ParameterStatus TimeZone")
            R.ok(4)

    await conn.copy_records_to_table(
        "apg_copy", records=[(phase, cid, k, f"n{k}") for k in range(20)], columns=["phase", "client_id", "k", "note"]
    )
    check(
        tuple(await conn.fetchrow("SELECT count(*), sum(k) FROM apg_copy WHERE phase = $1 AND client_id = $2", phase, cid)),
        (20, sum(range(20))),
        "COPY rows",
    )
    check(
        tuple(await conn.fetchrow("SELECT count(*), sum(i) FROM apg_items WHERE phase = $1 AND client_id = $2", phase, cid)),
        (iters * 3, 3 * sum(range(iters))),
        "final rows",
    )
    check(
        await conn.fetchval("SELECT count(*) FROM apg_many WHERE phase = $1 AND client_id = $2", phase, cid),
        many_total,
        "final executemany rows",
    )
    R.ok(3)


def cache_phase(iters, **conn_kw):
    async def run(phase, cid):
        tz = tz_pair(cid)[0]
        app = f"apg-{phase}-{cid}"
        conn = await connect(server_settings={"application_name": app, "TimeZone": tz}, **conn_kw)
        try:
            await client_ops(phase, cid, conn, tz, app, iters)
        finally:
            await conn.close()

    return run


async def pool_phase(phase, cid):
    tz_a, tz_b = tz_pair(cid)
    app = f"apg-pool-{cid}"
    pool = await asyncpg.create_pool(
        host=HOST,
        port=PORT,
        user=USER,
        password=PASSWORD,
        database=DBNAME,
        min_size=1,
        max_size=1,
        server_settings={"application_name": app, "TimeZone": tz_a},
    )
    try:
        for i in range(max(1, ITERS // 2)):
            async with pool.acquire() as conn:
                check(await conn.fetchval("SHOW TimeZone"), tz_a, f"round {i}: TimeZone from server_settings after the pool's RESET ALL")
                check(await conn.fetchval("SHOW application_name"), app, f"round {i}: application_name after RESET ALL")
                check(await conn.fetchval("SELECT $1::int + $2::int", i, cid), i + cid, "pooled fetchval")
                # Changed here; the pool's RESET ALL on release must undo it.
                await conn.execute(f"SET TimeZone = '{tz_b}'")
                check(await conn.fetchval("SHOW TimeZone"), tz_b, "SET TimeZone on a pooled connection")
                R.ok(4)
    finally:
        await pool.close()


async def main():
    await setup()
    await run_phase("cache-default", cache_phase(ITERS))
    # Shorter: the same workload, only the statement cache differs.
    await run_phase("cache-100", cache_phase(max(10, ITERS // 2), statement_cache_size=100))
    await run_phase("cache-2", cache_phase(max(10, ITERS // 2), statement_cache_size=2))
    await run_phase("pool", pool_phase)
    R.finish()


if __name__ == "__main__":
    asyncio.run(main())
