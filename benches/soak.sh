#!/usr/bin/env bash
# Soak: many clients on a small pool for a long time, every result checked,
# pgdyno's memory watched. Not part of CI (it takes DURATION seconds).
#
# Starts a throwaway PostgreSQL (initdb into a temp dir, fsync=off) and a
# release pgdyno in front of it (transaction mode, pool POOL), then runs the
# soak client (examples/soak.rs): CLIENTS connections, each looping over a
# random mix of simple, extended and prepared queries, transactions that
# insert and read back their own rows, COPY out and in, SET, deliberate
# errors (1/0) and cancels, checking every result against the client's own
# tag. pgdyno's RSS (VmRSS) is sampled every SAMPLE seconds.
#
# Reports the growth of RSS after the warm-up (WARMUP seconds): the mean of
# the last three samples minus the mean of the first three after the
# warm-up, and the errors. Exits non-zero if the client saw any unexpected
# error or wrong result, if pgdyno died, or if RSS grew by more than
# MAX_GROWTH_KB.
#
# Usage: benches/soak.sh            (DURATION=600 CLIENTS=500 POOL=20)
#        DURATION=180 benches/soak.sh
# Env: DURATION CLIENTS POOL SAMPLE WARMUP MAX_GROWTH_KB PGDYNO_BIN KEEP_TMP
#
# Traffic goes only to 127.0.0.1. Everything started here is stopped by PID on exit.
set -euo pipefail

DURATION=${DURATION:-600}
CLIENTS=${CLIENTS:-500}
POOL=${POOL:-20}
SAMPLE=${SAMPLE:-5}
WARMUP=${WARMUP:-$((DURATION / 5 < 60 ? DURATION / 5 : 60))}
MAX_GROWTH_KB=${MAX_GROWTH_KB:-20480}
KEEP_TMP=${KEEP_TMP:-0}

REPO=$(cd "$(dirname "$0")/.." && pwd)
log() { printf '[soak %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

pgtool() {
  local p newest
  if p=$(command -v "$1"); then
    printf '%s\n' "$p"
    return
  fi
  newest=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)
  [[ -n $newest && -x $newest/$1 ]] || return 1
  printf '%s\n' "$newest/$1"
}
INITDB=$(pgtool initdb) || die "initdb not found (apt-get install postgresql)"
POSTGRES=$(pgtool postgres) || die "postgres not found (apt-get install postgresql)"
PSQL=$(pgtool psql) || die "psql not found"
PG_ISREADY=$(pgtool pg_isready) || die "pg_isready not found"
AS_SVC=()
if [[ $EUID == 0 ]]; then
  AS_SVC=(setpriv --reuid="$(id -u nobody)" --regid="$(id -g nobody)" --clear-groups --)
fi
if [[ $(ulimit -n) != unlimited ]] && (($(ulimit -n) < CLIENTS * 2 + 256)); then
  ulimit -n $((CLIENTS * 2 + 256)) 2>/dev/null || log "warning: open files limit is $(ulimit -n)"
fi

# ---------------------------------------------------------------- builds
cd "$REPO"
if [[ -z ${PGDYNO_BIN:-} ]]; then
  log "cargo build --release --bin pgdyno"
  cargo build --release --quiet --bin pgdyno
  PGDYNO_BIN=$REPO/target/release/pgdyno
fi
log "cargo build --example soak"
cargo build --quiet --example soak
WORK=$(mktemp -d /tmp/pgdyno-soak.XXXXXX)
# Copies: a concurrent build must not swap the binaries under a running soak.
cp "$PGDYNO_BIN" "$WORK/pgdyno"
cp "$REPO/target/debug/examples/soak" "$WORK/soak"

PG_PID='' DYN_PID='' SOAK_PID='' SAMPLER_PID=''
stop_pid() {
  local pid=$1 sig=$2 i
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill "-$sig" "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  stop_pid "$SAMPLER_PID" TERM
  stop_pid "$SOAK_PID" TERM
  stop_pid "$DYN_PID" INT # SIGTERM would wait for clients to leave
  stop_pid "$PG_PID" INT
  if ((KEEP_TMP || rc != 0)); then log "logs kept in $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  local p i
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 12000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      printf '%s\n' "$p"
      return
    fi
  done
  die "no free port found"
}

# ---------------------------------------------------------------- PostgreSQL
PGDATA=$WORK/data SOCKDIR=$WORK/sock
mkdir -p "$PGDATA" "$SOCKDIR"
if [[ $EUID == 0 ]]; then chown nobody: "$WORK" "$PGDATA" "$SOCKDIR"; fi
chmod 700 "$PGDATA"
PG_PORT=$(free_port)
PGPASS=pw$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')
(cd "$WORK" && "${AS_SVC[@]}" "$INITDB" -D "$PGDATA" -U postgres -E UTF8 --no-locale \
  --auth-local=trust --auth-host=scram-sha-256 >"$WORK/initdb.log" 2>&1) ||
  { tail -n 30 "$WORK/initdb.log" >&2; die "initdb failed"; }
cat >>"$PGDATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$SOCKDIR'
max_connections = $((POOL + 20))
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 64MB
EOF
(cd "$WORK" && exec "${AS_SVC[@]}" "$POSTGRES" -D "$PGDATA" >"$WORK/postgres.log" 2>&1) &
PG_PID=$!
for ((i = 0; i < 300; i++)); do
  "$PG_ISREADY" -q -h 127.0.0.1 -p "$PG_PORT" && break
  kill -0 "$PG_PID" 2>/dev/null || { tail -n 30 "$WORK/postgres.log" >&2; die "postgres exited"; }
  sleep 0.1
done
pg_admin() { "$PSQL" -h "$SOCKDIR" -p "$PG_PORT" -U postgres -X -q -A -t -v ON_ERROR_STOP=1 "$@"; }
pg_admin -d postgres -c "CREATE ROLE app LOGIN PASSWORD '$PGPASS'" -c "CREATE DATABASE appdb OWNER app"
pg_admin -d appdb -c "CREATE TABLE soak (tag text, seq bigint, i bigint)" -c "ALTER TABLE soak OWNER TO app"
log "postgres pid $PG_PID on 127.0.0.1:$PG_PORT"

# ---------------------------------------------------------------- pgdyno
DYN_PORT=$(free_port)
# pgdyno takes every PGDYNO_* variable for a setting; PGDYNO_BIN is this script's.
env -u DATABASE_URL -u PGDYNO_BIN "$WORK/pgdyno" --listen "127.0.0.1:$DYN_PORT" \
  --upstream "postgres://app:$PGPASS@127.0.0.1:$PG_PORT/appdb" \
  --pool-mode transaction --pool-size "$POOL" --max-client-conn $((CLIENTS + 100)) \
  --log-connections false --log-disconnections false >"$WORK/pgdyno.log" 2>&1 &
DYN_PID=$!
for ((i = 0; i < 100; i++)); do
  (exec 3<>"/dev/tcp/127.0.0.1/$DYN_PORT") 2>/dev/null && break
  kill -0 "$DYN_PID" 2>/dev/null || { cat "$WORK/pgdyno.log" >&2; die "pgdyno exited"; }
  sleep 0.1
done
log "pgdyno pid $DYN_PID on 127.0.0.1:$DYN_PORT; $CLIENTS clients, pool $POOL, ${DURATION}s, warm-up ${WARMUP}s"

# ---------------------------------------------------------------- the soak
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
(
  t0=$(date +%s)
  while kill -0 "$DYN_PID" 2>/dev/null; do
    printf '%s %s\n' $(($(date +%s) - t0)) "$(rss_kb "$DYN_PID")"
    sleep "$SAMPLE"
  done
) >"$WORK/rss.txt" &
SAMPLER_PID=$!
SOAK_PASSWORD=$PGPASS SOAK_USER=app SOAK_DB=appdb "$WORK/soak" "$DYN_PORT" "$CLIENTS" "$DURATION" \
  >"$WORK/soak.out" 2>&1 &
SOAK_PID=$!
tail -n +1 -f "$WORK/soak.out" --pid="$SOAK_PID" >&2 &
set +e
wait "$SOAK_PID"
SOAK_RC=$?
set -e
SOAK_PID=''
sleep 1
PGDYNO_ALIVE=1
kill -0 "$DYN_PID" 2>/dev/null || PGDYNO_ALIVE=0
stop_pid "$SAMPLER_PID" TERM
SAMPLER_PID=''

# ---------------------------------------------------------------- report
read -r BASE LAST PEAK NSAMPLES < <(awk -v w="$WARMUP" '
  $1 >= w { n++; v[n] = $2; if ($2 > peak) peak = $2 }
  END {
    if (n < 6) { print 0, 0, peak + 0, n + 0; exit }
    printf "%d %d %d %d\n", (v[1] + v[2] + v[3]) / 3, (v[n-2] + v[n-1] + v[n]) / 3, peak, n
  }' "$WORK/rss.txt")
GROWTH=$((LAST - BASE))
FIRST_RSS=$(awk 'NR == 1 { print $2 }' "$WORK/rss.txt")
PGDYNO_WARN=$(grep -c -E 'WARN|ERROR' "$WORK/pgdyno.log" || true)
FINAL=$(grep '^final ' "$WORK/soak.out" || echo "final: none")
echo
echo "soak: ${DURATION}s, $CLIENTS clients, pool $POOL, warm-up ${WARMUP}s, RSS sampled every ${SAMPLE}s"
echo "client: $FINAL"
echo "client exit status: $SOAK_RC"
echo "pgdyno RSS: ${FIRST_RSS:-?} kB at start, $BASE kB after warm-up, $LAST kB at the end (peak $PEAK kB, $NSAMPLES samples after warm-up)"
echo "pgdyno RSS growth after warm-up: $GROWTH kB (threshold $MAX_GROWTH_KB kB)"
echo "pgdyno still running: $PGDYNO_ALIVE; WARN/ERROR lines in its log: $PGDYNO_WARN"
grep -E 'WARN|ERROR' "$WORK/pgdyno.log" | cut -c1-200 | sort | uniq -c | sort -rn | head -n 5 || true
cp "$WORK/rss.txt" "${SOAK_RSS_OUT:-/dev/null}" 2>/dev/null || true

FAIL=0
((SOAK_RC == 0)) || { log "FAIL: the client saw unexpected errors or wrong results"; FAIL=1; }
((PGDYNO_ALIVE)) || { log "FAIL: pgdyno died"; FAIL=1; }
((NSAMPLES >= 6)) || { log "FAIL: too few RSS samples after the warm-up"; FAIL=1; }
((GROWTH <= MAX_GROWTH_KB)) || { log "FAIL: RSS grew by $GROWTH kB"; FAIL=1; }
((FAIL == 0)) && log "PASS"
exit "$FAIL"
