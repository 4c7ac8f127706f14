#!/usr/bin/env bash
# pgdyno in front of a throwaway PostgreSQL, with a short pgbench load through it.
#
# Starts PostgreSQL (initdb into a temp dir, 127.0.0.1, a free port; as the
# `nobody` user when run as root), builds and starts pgdyno in front of it in
# transaction mode with a pool of 5, runs pgbench with 20 clients through it,
# and then keeps serving until Ctrl-C so you can connect yourself (the psql
# line is printed). `--once` exits after the load instead.
#
# Needs: cargo, and PostgreSQL's server binaries (Debian: apt-get install postgresql).
set -euo pipefail

ONCE=0
[[ ${1:-} == --once ]] && ONCE=1
cd "$(dirname "$0")/.."

. scripts/pg.sh

PG_BIN=$(find_pg_bin)
make_tmp quickstart

PG_PORT=$(free_port)
PGDYNO_PORT=$(free_port)
METRICS_PORT=$(free_port)
PASSWORD=quickstart-secret
mkdir "$TMP/data"
echo "$PASSWORD" >"$TMP/pwfile"
[[ $(id -u) == 0 ]] && chown -R nobody "$TMP"

echo "==> starting PostgreSQL on 127.0.0.1:$PG_PORT"
as_pg "$PG_BIN/initdb" -D "$TMP/data" -U app --auth=scram-sha-256 --pwfile="$TMP/pwfile" >"$TMP/initdb.log"
as_pg "$PG_BIN/pg_ctl" -D "$TMP/data" -l "$TMP/postgres.log" -w -o \
  "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $TMP -c fsync=off -c max_connections=50" start >/dev/null

echo "==> building pgdyno"
cargo build --release --quiet
UPSTREAM="postgres://app:$PASSWORD@127.0.0.1:$PG_PORT/postgres"
echo "==> starting pgdyno on 127.0.0.1:$PGDYNO_PORT (transaction mode, pool of 5)"
target/release/pgdyno --listen "127.0.0.1:$PGDYNO_PORT" --upstream "$UPSTREAM" \
  --pool-mode transaction --pool-size 5 --max-client-conn 200 --admin-users app \
  --metrics-listen "127.0.0.1:$METRICS_PORT" 2>"$TMP/pgdyno.log" &
PIDS+=($!)
wait_listening "${PIDS[-1]}" "$PGDYNO_PORT" || { cat "$TMP/pgdyno.log" >&2; exit 1; }

export PGPASSWORD=$PASSWORD
echo "==> pgbench: 20 clients for 6 s through pgdyno's 5 backends"
"$PG_BIN/pgbench" -i -s 1 -q -h 127.0.0.1 -p "$PGDYNO_PORT" -U app postgres 2>&1 | tail -1
"$PG_BIN/pgbench" -c 20 -j 2 -T 6 -h 127.0.0.1 -p "$PGDYNO_PORT" -U app postgres >"$TMP/pgbench.out" 2>&1 &
BENCH=$!
sleep 3
echo "==> live, mid-load: pgdyno's admin console (SHOW POOLS) and /metrics"
"$PG_BIN/psql" -h 127.0.0.1 -p "$PGDYNO_PORT" -U app pgbouncer -c "SHOW POOLS" |
  cut -d'|' -f1-4,7,10,14 | grep -v -- '-+-'
python3 -c "import urllib.request as u; print(''.join(l for l in u.urlopen('http://127.0.0.1:$METRICS_PORT/metrics').read().decode().splitlines(True) if l.startswith(('pgdyno_pool_saturation','pgdyno_clients_waiting','pgdyno_transactions_total'))))"
wait "$BENCH"
grep -E "number of (transactions actually processed|failed)|tps" "$TMP/pgbench.out"
echo "==> SHOW STATS_TOTALS"
"$PG_BIN/psql" -h 127.0.0.1 -p "$PGDYNO_PORT" -U app pgbouncer -c "SHOW STATS_TOTALS" | cut -d'|' -f1-4 | grep -v -- '-+-'
echo "==> PostgreSQL saw these connections from pgdyno:"
"$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U app postgres -tAc \
  "select count(*) || ' backends' from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid()"

if [[ $ONCE == 1 ]]; then
  exit 0
fi
echo
echo "pgdyno is serving. Connect with:"
echo "  PGPASSWORD=$PASSWORD psql -h 127.0.0.1 -p $PGDYNO_PORT -U app postgres"
echo "Ctrl-C stops pgdyno and PostgreSQL. pgdyno's log: $TMP/pgdyno.log"
wait "${PIDS[0]}"
