"""psycopg 3 against pgdyno (or PostgreSQL directly): CLIENTS threads, each with
its own connection, in three phases:

  prepared  prepare_threshold=0 (every query a named server-side prepared
            statement), autocommit and non-autocommit clients, parameterized
            queries, transactions committed and rolled back, expected errors
  evict     prepared_max=3 with 8 statements in turn: evicted statements are
            deallocated and prepared again, also in pipelines
  pipeline  `with conn.pipeline():` batches of selects, inserts and
            executemany, in and out of transactions, an error in a pipeline
  session   per-client TimeZone (at startup via options and by SET /
            set_config), application_name, DateStyle, IntervalStyle, checked
            with SHOW, current_setting() and the driver's ParameterStatus,
            across many transactions interleaved with other clients; SET LOCAL
            and a rolled-back SET
  reset     RESET / RESET ALL return TimeZone and application_name to the
            session's startup values (startup packet, options=-c)

Every result is compared with the value it must have.
"""

import threading
import time

import psycopg
from psycopg import errors, sql

from common import (
    CLIENTS,
    DBNAME,
    HOST,
    ITERS,
    PASSWORD,
    PORT,
    TZ_OFFSETS,
    USER,
    PHASES,
    CheckFailed,
    Results,
    check,
    tz_pair,
)

R = Results("psycopg")
R.info = f", psycopg {psycopg.__version__} with libpq {psycopg.pq.version()} ({psycopg.pq.__impl__})"


def connect(**kw):
    return psycopg.connect(host=HOST, port=PORT, user=USER, password=PASSWORD, dbname=DBNAME, **kw)


def setup():
    with connect(autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS psy_items, psy_pipe")
        conn.execute(
            "CREATE TABLE psy_items (id bigserial PRIMARY KEY, client_id int NOT NULL, i int NOT NULL, val text NOT NULL)"
        )
        conn.execute("CREATE TABLE psy_pipe (client_id int NOT NULL, i int NOT NULL, j int NOT NULL)")


def run_phase(name, fn, clients=CLIENTS):
    if PHASES and name not in PHASES:
        return
    started = time.monotonic()
    barrier = threading.Barrier(clients)

    def body(cid):
        try:
            barrier.wait(timeout=60)
            fn(cid)
        except Exception as e:  # noqa: BLE001 - every failure is reported
            R.fail(name, cid, e)

    threads = [threading.Thread(target=body, args=(cid,), name=f"{name}-{cid}") for cid in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    R.phase_done(name, started, clients)


# ------------------------------------------------------------------ prepared


def prepared_client(cid):
    autocommit = cid % 2 == 0
    with connect(prepare_threshold=0, autocommit=autocommit, application_name=f"psy-prep-{cid}") as conn:
        check(conn.prepare_threshold, 0, "prepare_threshold")
        cur = conn.cursor()
        for i in range(ITERS):
            check(cur.execute("SELECT %s::int + %s::int", (i, cid)).fetchone(), (i + cid,), "int sum")
            check(
                cur.execute("SELECT %s::text || ':' || %s::int", (f"c{cid}", i)).fetchone(),
                (f"c{cid}:{i}",),
                "text concat",
            )
            n = i % 7 + 1
            check(
                cur.execute("SELECT g, g * %s::int FROM generate_series(1, %s::int) g", (cid, n)).fetchall(),
                [(g, g * cid) for g in range(1, n + 1)],
                "generate_series rows",
            )
            # The same statement with a binary result.
            bcur = conn.cursor(binary=True)
            check(bcur.execute("SELECT %s::bigint * 3", (cid * 1000 + i,)).fetchone(), ((cid * 1000 + i) * 3,), "binary")
            if not autocommit:
                conn.commit()
            R.ok(4)

            with conn.transaction():
                cur.execute(
                    "INSERT INTO psy_items (client_id, i, val) VALUES (%s, %s, %s)", (cid, i, f"v{cid}-{i}")
                )
                check(
                    cur.execute("SELECT count(*) FROM psy_items WHERE client_id = %s AND i >= 0", (cid,)).fetchone(),
                    (i + 1,),
                    "count in transaction",
                )
                check(
                    cur.execute("SELECT val FROM psy_items WHERE client_id = %s AND i = %s", (cid, i)).fetchone(),
                    (f"v{cid}-{i}",),
                    "read back",
                )
            R.ok(2)

            if i % 5 == 0:
                with conn.transaction(force_rollback=True):
                    cur.execute("INSERT INTO psy_items (client_id, i, val) VALUES (%s, -1, 'rolled back')", (cid,))
                    check(
                        cur.execute("SELECT count(*) FROM psy_items WHERE client_id = %s AND i = -1", (cid,)).fetchone(),
                        (1,),
                        "uncommitted row visible in its transaction",
                    )
                check(
                    cur.execute("SELECT count(*) FROM psy_items WHERE client_id = %s AND i = -1", (cid,)).fetchone(),
                    (0,),
                    "rolled-back row gone",
                )
                if not autocommit:
                    conn.commit()
                R.ok(2)

            if i % 10 == 3:
                # An error outside and inside a transaction; the connection must go on.
                try:
                    cur.execute("SELECT 1 / %s::int", (0,))
                    raise CheckFailed("1/0 did not fail")
                except errors.DivisionByZero as e:
                    check(e.sqlstate, "22012", "sqlstate")
                    if not autocommit:
                        conn.rollback()
                try:
                    with conn.transaction():
                        cur.execute("INSERT INTO psy_items (client_id, i, val) VALUES (%s, -2, 'x')", (cid,))
                        cur.execute("SELECT 1 / %s::int", (0,))
                    raise CheckFailed("1/0 in a transaction did not fail")
                except errors.DivisionByZero:
                    pass
                check(
                    cur.execute("SELECT count(*) FROM psy_items WHERE client_id = %s AND i = -2", (cid,)).fetchone(),
                    (0,),
                    "row of failed transaction gone",
                )
                if not autocommit:
                    conn.commit()
                R.ok(3)

            if i % 10 == 6:
                # A server-side (named) cursor, fetched in several round trips, and COPY.
                with conn.transaction():
                    with conn.cursor(name=f"psy_cur_{cid}") as ncur:
                        ncur.itersize = 7
                        ncur.execute("SELECT g * %s::int FROM generate_series(1, %s::int) g", (cid, 30))
                        check([r[0] for r in ncur], [g * cid for g in range(1, 31)], "named cursor rows")
                with cur.copy("COPY psy_items (client_id, i, val) FROM STDIN") as cp:
                    for k in range(5):
                        cp.write_row((cid, -10 - k, f"copy{k}"))
                check(
                    cur.execute("SELECT count(*) FROM psy_items WHERE client_id = %s AND val LIKE 'copy%%'", (cid,)).fetchone(),
                    (5 * (i // 10 + 1),),
                    "COPY FROM STDIN rows",
                )
                with cur.copy("COPY (SELECT g, %s::int FROM generate_series(1, 4) g) TO STDOUT", (cid,)) as cp:
                    got = [tuple(int(x) for x in row) for row in cp.rows()]
                check(got, [(g, cid) for g in range(1, 5)], "COPY TO STDOUT rows")
                if not autocommit:
                    conn.commit()
                R.ok(3)

        cur.execute("DELETE FROM psy_items WHERE client_id = %s AND val LIKE 'copy%%'", (cid,))
        check(
            cur.execute(
                "SELECT count(*), sum(i), count(*) FILTER (WHERE val <> 'v' || client_id || '-' || i) "
                "FROM psy_items WHERE client_id = %s",
                (cid,),
            ).fetchone(),
            (ITERS, sum(range(ITERS)), 0),
            "final rows",
        )
        if not autocommit:
            conn.commit()
        R.ok()


# ------------------------------------------------------------------ evict

EVICT_QUERIES = [f"SELECT %s::int + {k}, %s::text || '{k}'" for k in range(8)]


def evict_client(cid):
    """prepared_max=3 with 8 statements in turn: psycopg keeps evicting, and
    deallocates each evicted statement (a protocol Close with libpq >= 17,
    `DEALLOCATE name` with an older libpq), then prepares it again."""
    with connect(prepare_threshold=0, autocommit=cid % 2 == 0) as conn:
        conn.prepared_max = 3
        for i in range(ITERS):
            k = (i * 3 + cid) % len(EVICT_QUERIES)
            check(conn.execute(EVICT_QUERIES[k], (i, f"e{cid}-")).fetchone(), (i + k, f"e{cid}-{k}"), "evicted statement result")
            if i % 4 == 0:
                with conn.pipeline():
                    curs = [conn.execute(EVICT_QUERIES[(k + d) % 8], (cid, "p")) for d in range(4)]
                for d, c in enumerate(curs):
                    kk = (k + d) % 8
                    check(c.fetchone(), (cid + kk, f"p{kk}"), "evicted statement in a pipeline")
            if not conn.autocommit:
                conn.commit()
            R.ok()


# ------------------------------------------------------------------ pipeline


def pipeline_client(cid):
    threshold = 0 if cid % 2 == 0 else 5  # 5 is psycopg's default
    autocommit = cid % 4 < 2
    with connect(prepare_threshold=threshold, autocommit=autocommit) as conn:
        cur = conn.cursor()
        rounds = max(1, ITERS // 2)
        total = 0
        for i in range(rounds):
            in_tx = i % 2 == 1
            ctx = conn.transaction() if in_tx else None
            if ctx:
                ctx.__enter__()
            try:
                with conn.pipeline():
                    c1 = conn.execute("SELECT %s::int * 2", (i,))
                    c2 = conn.execute("SELECT %s::int + %s::int, %s::text", (cid, i, f"p{cid}"))
                    cur.executemany(
                        "INSERT INTO psy_pipe (client_id, i, j) VALUES (%s, %s, %s)",
                        [(cid, i, j) for j in range(5)],
                    )
                    c3 = conn.execute("SELECT count(*), sum(j) FROM psy_pipe WHERE client_id = %s AND i = %s", (cid, i))
                    c4 = conn.execute("SELECT g FROM generate_series(1, %s::int) g", (i % 4 + 1,))
                total += 5
                check(c1.fetchone(), (i * 2,), "pipeline select 1")
                check(c2.fetchone(), (cid + i, f"p{cid}"), "pipeline select 2")
                check(c3.fetchone(), (5, 10), "pipeline count after executemany")
                check(c4.fetchall(), [(g,) for g in range(1, i % 4 + 2)], "pipeline rows")
            finally:
                if ctx:
                    ctx.__exit__(None, None, None)
            if not autocommit and not in_tx:
                conn.commit()
            R.ok(4)

            # Fetching inside the pipeline forces a sync point mid-block.
            with conn.pipeline() as p:
                a = conn.execute("SELECT %s::int - 1", (i,))
                p.sync()
                check(a.fetchone(), (i - 1,), "fetch after sync")
                b = conn.execute("SELECT count(*) FROM psy_pipe WHERE client_id = %s", (cid,))
                check(b.fetchone(), (total,), "count inside pipeline")
            if not autocommit:
                conn.commit()
            R.ok(2)

            if i % 6 == 2:
                # A failing statement in a pipeline: the error surfaces, the connection goes on.
                try:
                    with conn.pipeline():
                        conn.execute("SELECT %s::int", (1,))
                        conn.execute("SELECT 1 / %s::int", (0,))
                    raise CheckFailed("1/0 in a pipeline did not fail")
                except errors.DivisionByZero:
                    pass
                if not autocommit:
                    conn.rollback()
                check(conn.execute("SELECT %s::int + 1", (i,)).fetchone(), (i + 1,), "query after pipeline error")
                if not autocommit:
                    conn.commit()
                R.ok()

        check(
            conn.execute("SELECT count(*), sum(i) FROM psy_pipe WHERE client_id = %s", (cid,)).fetchone(),
            (rounds * 5, 5 * sum(range(rounds))),
            "final pipeline rows",
        )
        if not autocommit:
            conn.commit()
        R.ok()


# ------------------------------------------------------------------ session


def session_client(cid):
    tz_a, tz_b = tz_pair(cid)
    app = f"psy-session-{cid}"
    datestyle, date_text = [("ISO, MDY", "2024-01-15"), ("SQL, DMY", "15/01/2024"), ("German, DMY", "15.01.2024")][cid % 3]
    intervalstyle, interval_text = [("postgres", "1 day 02:00:00"), ("postgres_verbose", "@ 1 day 2 hours")][cid % 2]
    kw = {"autocommit": True, "application_name": app, "prepare_threshold": 0 if cid % 3 == 0 else 5}
    if cid % 2 == 0:
        kw["options"] = f"-c TimeZone={tz_a} -c IntervalStyle={intervalstyle}"
    with connect(**kw) as conn:
        initial_tz = conn.execute("SHOW TimeZone").fetchone()[0]
        if cid % 2 == 0:
            check(initial_tz, tz_a, "TimeZone from startup options")
        if cid % 2 == 1:
            conn.execute(sql.SQL("SET TimeZone TO {}").format(sql.Literal(tz_a)))
            conn.execute(sql.SQL("SET IntervalStyle = {}").format(sql.Literal(intervalstyle)))
        conn.execute(sql.SQL("SET DateStyle = {}").format(sql.Literal(datestyle)))
        current = tz_a

        def check_all(expected_tz, what):
            check(conn.execute("SHOW TimeZone").fetchone(), (expected_tz,), f"{what}: SHOW TimeZone")
            check(
                conn.execute(
                    "SELECT current_setting('TimeZone'), extract(timezone from '2024-01-15 12:00:00+00'::timestamptz)::int"
                ).fetchone(),
                (expected_tz, TZ_OFFSETS[expected_tz]),
                f"{what}: current_setting/offset",
            )
            check(conn.info.parameter_status("TimeZone"), expected_tz, f"{what}: ParameterStatus TimeZone")
            R.ok(3)

        for i in range(ITERS):
            want = tz_a if (i // 4) % 2 == 0 else tz_b
            if want != current:
                if i % 3 == 0:
                    conn.execute("SELECT set_config('TimeZone', %s, false)", (want,))
                else:
                    conn.execute(sql.SQL("SET TimeZone = {}").format(sql.Literal(want)))
                current = want
            check_all(current, f"iteration {i}")
            check(conn.execute("SHOW application_name").fetchone(), (app,), "SHOW application_name")
            check(conn.info.parameter_status("application_name"), app, "ParameterStatus application_name")
            check(conn.execute("SELECT '2024-01-15'::date::text").fetchone(), (date_text,), "DateStyle output")
            check(conn.info.parameter_status("DateStyle"), datestyle, "ParameterStatus DateStyle")
            check(
                conn.execute("SELECT '1 day 2 hours'::interval::text").fetchone(),
                (interval_text,),
                "IntervalStyle output",
            )
            R.ok(5)

            if i % 10 == 5:
                other = tz_b if current == tz_a else tz_a
                # SET LOCAL lasts for the transaction only.
                with conn.transaction():
                    conn.execute(sql.SQL("SET LOCAL TimeZone = {}").format(sql.Literal(other)))
                    check(conn.execute("SHOW TimeZone").fetchone(), (other,), "SET LOCAL inside transaction")
                check_all(current, "after SET LOCAL transaction")
                # A SET in a rolled-back transaction is undone.
                with conn.transaction(force_rollback=True):
                    conn.execute(sql.SQL("SET TimeZone = {}").format(sql.Literal(other)))
                    check(conn.execute("SHOW TimeZone").fetchone(), (other,), "SET inside rolled-back transaction")
                check_all(current, "after rolled-back SET")
                # A SET in a committed transaction stays.
                with conn.transaction():
                    conn.execute(sql.SQL("SET TimeZone = {}").format(sql.Literal(other)))
                check_all(other, "after committed SET")
                conn.execute(sql.SQL("SET TimeZone = {}").format(sql.Literal(current)))
                check_all(current, "after SET back")
                R.ok(2)



# ------------------------------------------------------------------ reset


def reset_client(cid):
    """RESET / RESET ALL return a parameter to the value the session started
    with: the startup packet's (here via options=-c) when it had one, else the
    server's default. asyncpg's pool runs RESET ALL on every release, so this is
    what a pooled asyncpg connection with server_settings sees."""
    tz_a, tz_b = tz_pair(cid)
    app = f"psy-reset-{cid}"
    with_startup = cid % 2 == 0
    kw = {"autocommit": True, "application_name": app}
    if with_startup:
        kw["options"] = f"-c TimeZone={tz_a}"
    with connect(**kw) as conn:
        initial = conn.execute("SHOW TimeZone").fetchone()[0]
        if with_startup:
            check(initial, tz_a, "TimeZone from startup options")
        for i in range(max(1, ITERS // 5)):
            conn.execute(sql.SQL("SET TimeZone = {}").format(sql.Literal(tz_b)))
            conn.execute(sql.SQL("SET application_name = {}").format(sql.Literal(f"changed-{cid}")))
            check(conn.execute("SHOW TimeZone").fetchone(), (tz_b,), "SHOW TimeZone after SET")
            conn.execute("RESET TimeZone" if i % 2 == 0 else "RESET ALL")
            for _ in range(3):
                check(conn.execute("SHOW TimeZone").fetchone(), (initial,), f"SHOW TimeZone after RESET (startup option: {with_startup})")
                check(conn.info.parameter_status("TimeZone"), initial, "ParameterStatus TimeZone after RESET")
                R.ok(2)
            if i % 2 == 1:
                check(conn.execute("SHOW application_name").fetchone(), (app,), "application_name after RESET ALL")
            conn.execute("RESET application_name")
            check(conn.execute("SHOW application_name").fetchone(), (app,), "application_name after RESET")
            R.ok(2)


def main():
    setup()
    run_phase("prepared", prepared_client)
    run_phase("evict", evict_client)
    run_phase("pipeline", pipeline_client)
    run_phase("session", session_client)
    run_phase("reset", reset_client)
    R.finish()


if __name__ == "__main__":
    main()
