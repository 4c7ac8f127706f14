#!/usr/bin/env bash
# Real-driver compatibility tests for pgdyno.
#
# Starts a throwaway PostgreSQL, starts pgdyno in front of it (transaction
# mode, pool of 5), and runs one suite per driver against it, each with 40
# concurrent clients:
#
#   psycopg   Python psycopg 3 (psycopg[binary], its bundled libpq):
#             prepare_threshold=0, statement eviction, pipeline mode,
#             per-client TimeZone / application_name / DateStyle, RESET
#   psycopg-libpq  the same driver on the system's libpq (PSYCOPG_IMPL=python,
#             Debian libpq5, older than 17): phases evict and pipeline, where
#             libpq's version changes what goes on the wire (an evicted
#             statement is dropped with SQL `DEALLOCATE name`, not Close)
#   asyncpg   Python asyncpg: statement cache (default, 100 and a tiny one),
#             fetch/fetchval/executemany, transactions, explicit prepare()
#   node-pg   Node `pg`: named queries, transactions
#   pgjdbc    Java PgJDBC: prepareThreshold=1 and -1, PreparedStatement reuse,
#             batches, commit/rollback
#
# Usage: tests/clients/run.sh [--direct | --both] [SUITE...]
#   --direct   point the suites at PostgreSQL itself instead of pgdyno (to
#              tell a pgdyno bug from a test bug)
#   --both     run every suite through pgdyno and then directly
#   SUITE...   run only these suites (psycopg psycopg-libpq asyncpg node-pg pgjdbc)
# Environment:
#   PGDYNO_BIN      use this pgdyno binary instead of `cargo build`
#   CLIENTS         concurrent clients per suite (default 40)
#   ITERS           iterations per client (default 50)
#   SUITE_TIMEOUT   seconds before a suite is killed (default 240)
#   KEEP_TMP=1      keep the temp dir (logs, data) after the run
#   PG_OPTS         extra postgres options, e.g. "-c log_statement=all"
#   PHASES=a,b      run only these phases of each suite (debugging)
#
# Installs what is missing on first use: a venv in tests/clients/.venv
# (psycopg[binary], asyncpg), node_modules in tests/clients/node, and the
# Debian packages libpostgresql-jdbc-java (and default-jdk-headless when javac
# is missing). The last line printed is `N passed, M failed` (suites).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
ALL_SUITES=(psycopg psycopg-libpq asyncpg node-pg pgjdbc)
MODES=(pgdyno)
SUITES=()
for arg in "$@"; do
  case $arg in
    --direct) MODES=(direct) ;;
    --both) MODES=(pgdyno direct) ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    psycopg | psycopg-libpq | asyncpg | node-pg | pgjdbc) SUITES+=("$arg") ;;
    *) echo "run.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done
[[ ${#SUITES[@]} -gt 0 ]] || SUITES=("${ALL_SUITES[@]}")
export CLIENTS=${CLIENTS:-40}
export ITERS=${ITERS:-50}
SUITE_TIMEOUT=${SUITE_TIMEOUT:-240}
START_TIME=$(date +%s)

log() { echo "==> [$(( $(date +%s) - START_TIME ))s] $*"; }
die() { echo "run.sh: $*" >&2; exit 1; }
is_root() { [[ $(id -u) == 0 ]]; }

wants() { local s; for s in "${SUITES[@]}"; do [[ $s == "$1" ]] && return 0; done; return 1; }

# ---------------------------------------------------------------- installs
APT_UPDATED=0
apt_install() {
  is_root || die "missing $* and not root: install it (apt-get install $*) or run as root"
  command -v apt-get >/dev/null || die "missing $* and no apt-get here"
  if [[ $APT_UPDATED == 0 ]]; then
    log "apt-get update"
    apt-get update -q >/dev/null || die "apt-get update failed"
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/tmp/pgdyno-clients-apt.log 2>&1 ||
    { tail -20 /tmp/pgdyno-clients-apt.log >&2; die "apt-get install $* failed"; }
}

VENV=$HERE/.venv
PY=$VENV/bin/python
install_python() {
  if [[ ! -x $PY ]]; then
    command -v python3 >/dev/null || die "python3 not found"
    log "creating venv $VENV"
    python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  fi
  if ! "$PY" -c 'import psycopg, asyncpg, sys; sys.exit(tuple(map(int, psycopg.__version__.split(".")[:2])) < (3, 1))' 2>/dev/null; then
    log "pip install psycopg[binary] asyncpg"
    "$VENV/bin/pip" install -q --disable-pip-version-check 'psycopg[binary]>=3.1' 'asyncpg' ||
      die "pip install into $VENV failed"
  fi
}

install_node() {
  command -v node >/dev/null && command -v npm >/dev/null ||
    die "node/npm not found (Debian: apt-get install nodejs npm)"
  if [[ ! -d $HERE/node/node_modules/pg ]]; then
    log "npm install (tests/clients/node)"
    (cd "$HERE/node" && npm install --no-audit --no-fund --loglevel=error >/dev/null) || die "npm install failed"
  fi
}

JDBC_JAR=${JDBC_JAR:-/usr/share/java/postgresql.jar}
JAVA_BUILD=$HERE/java/build
install_java() {
  local pkgs=()
  [[ -f $JDBC_JAR ]] || pkgs+=(libpostgresql-jdbc-java)
  command -v javac >/dev/null && command -v java >/dev/null || pkgs+=(default-jdk-headless)
  [[ ${#pkgs[@]} == 0 ]] || apt_install "${pkgs[@]}"
  [[ -f $JDBC_JAR ]] || die "$JDBC_JAR still missing"
  if [[ ! -f $JAVA_BUILD/JdbcSuite.class || $HERE/java/JdbcSuite.java -nt $JAVA_BUILD/JdbcSuite.class ]]; then
    log "javac JdbcSuite.java"
    mkdir -p "$JAVA_BUILD"
    javac -d "$JAVA_BUILD" -cp "$JDBC_JAR" "$HERE/java/JdbcSuite.java" || die "javac failed"
  fi
}

install_libpq() {
  # psycopg's pure-Python implementation loads the system's libpq.so.5.
  if ! { ldconfig -p 2>/dev/null | grep -q 'libpq\.so\.5 '; }; then
    apt_install libpq5
  fi
}

if wants psycopg || wants psycopg-libpq || wants asyncpg; then install_python; fi
if wants psycopg-libpq; then install_libpq; fi
if wants node-pg; then install_node; fi
if wants pgjdbc; then install_java; fi

# ---------------------------------------------------------------- PostgreSQL
. "$ROOT/scripts/pg.sh"

PG_BIN=$(find_pg_bin)
TMP=$(mktemp -d /tmp/pgdyno-clients.XXXXXX)
chmod 755 "$TMP"
PGDYNO_PID=
PG_STARTED=0
cleanup() {
  local rc=$?
  # SIGINT: clients are closed as their transactions end (SIGTERM would
  # wait for them to leave).
  if [[ -n $PGDYNO_PID ]]; then kill -INT "$PGDYNO_PID" 2>/dev/null || true; wait "$PGDYNO_PID" 2>/dev/null || true; fi
  if [[ $PG_STARTED == 1 ]]; then
    as_pg "$PG_BIN/pg_ctl" -D "$TMP/data" -m immediate -w stop >/dev/null 2>&1 ||
      { [[ -f $TMP/data/postmaster.pid ]] && kill -QUIT "$(head -1 "$TMP/data/postmaster.pid")" 2>/dev/null || true; }
  fi
  if [[ ${KEEP_TMP:-0} == 1 ]]; then echo "(kept $TMP)" >&2; else rm -rf "$TMP"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PG_PORT=$(free_port)
SUPER_PASSWORD="super-$RANDOM$RANDOM"
export PGUSER=dyno_client
export PGPASSWORD="client-$RANDOM$RANDOM"
export PGDATABASE=dyno_clients
mkdir "$TMP/data"
echo "$SUPER_PASSWORD" >"$TMP/pwfile"
is_root && chown -R nobody "$TMP"

log "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT"
as_pg "$PG_BIN/initdb" -D "$TMP/data" -U postgres --auth=scram-sha-256 --pwfile="$TMP/pwfile" \
  -E UTF8 --locale=C.UTF-8 >"$TMP/initdb.log" 2>&1 ||
  as_pg "$PG_BIN/initdb" -D "$TMP/data" -U postgres --auth=scram-sha-256 --pwfile="$TMP/pwfile" \
    -E UTF8 --locale=C >"$TMP/initdb.log" 2>&1 || { cat "$TMP/initdb.log" >&2; die "initdb failed"; }
PG_STARTED=1
as_pg "$PG_BIN/pg_ctl" -D "$TMP/data" -l "$TMP/postgres.log" -w -t 60 -o \
  "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $TMP -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100 -c password_encryption=scram-sha-256 ${PG_OPTS:-}" \
  start >/dev/null || { cat "$TMP/postgres.log" >&2; die "PostgreSQL did not start"; }

PSQL="$PG_BIN/psql"
[[ -x $PSQL ]] || PSQL=$(command -v psql) || die "psql not found"
PGPASSWORD=$SUPER_PASSWORD "$PSQL" -q -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres <<SQL ||
CREATE ROLE $PGUSER LOGIN PASSWORD '$PGPASSWORD';
CREATE DATABASE $PGDATABASE OWNER $PGUSER;
SQL
  die "creating role and database failed"

# ---------------------------------------------------------------- pgdyno
start_pgdyno() {
  if [[ -n ${PGDYNO_BIN:-} ]]; then
    [[ -x $PGDYNO_BIN ]] || die "PGDYNO_BIN=$PGDYNO_BIN is not executable"
  else
    log "cargo build"
    (cd "$ROOT" && cargo build --quiet) || die "cargo build failed"
    PGDYNO_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/pgdyno
  fi
  PGDYNO_PORT=$(free_port)
  log "pgdyno on 127.0.0.1:$PGDYNO_PORT (transaction mode, pool of 5) -> PostgreSQL :$PG_PORT"
  "$PGDYNO_BIN" --listen "127.0.0.1:$PGDYNO_PORT" \
    --upstream "postgres://$PGUSER:$PGPASSWORD@127.0.0.1:$PG_PORT/$PGDATABASE" \
    --pool-mode transaction --pool-size 5 --max-client-conn 200 \
    --log-connections false --log-disconnections false 2>"$TMP/pgdyno.log" &
  PGDYNO_PID=$!
  wait_listening "$PGDYNO_PID" "$PGDYNO_PORT" && return 0
  cat "$TMP/pgdyno.log" >&2
  die "pgdyno did not listen on 127.0.0.1:$PGDYNO_PORT"
}
for m in "${MODES[@]}"; do [[ $m == pgdyno ]] && start_pgdyno; done

backends_now() {
  PGPASSWORD=$SUPER_PASSWORD "$PSQL" -X -tA -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c \
    "select count(*) from pg_stat_activity where backend_type = 'client backend' and usename = '$PGUSER'" 2>/dev/null || echo '?'
}

# ---------------------------------------------------------------- suites
suite_cmd() {
  case $1 in
    psycopg) echo "$PY $HERE/python/psycopg_suite.py" ;;
    psycopg-libpq) echo "env PSYCOPG_IMPL=python PHASES=${PHASES:-evict,pipeline} $PY $HERE/python/psycopg_suite.py" ;;
    asyncpg) echo "$PY $HERE/python/asyncpg_suite.py" ;;
    node-pg) echo "node $HERE/node/pg_suite.js" ;;
    pgjdbc) echo "java -Xss512k -cp $JAVA_BUILD:$JDBC_JAR JdbcSuite" ;;
  esac
}

PASSED=0
FAILED=0
SUMMARY=()
for mode in "${MODES[@]}"; do
  if [[ $mode == pgdyno ]]; then export PGHOST=127.0.0.1 PGPORT=$PGDYNO_PORT; else export PGHOST=127.0.0.1 PGPORT=$PG_PORT; fi
  export TARGET=$mode
  for suite in "${SUITES[@]}"; do
    name=$suite
    [[ ${#MODES[@]} == 1 && $mode == pgdyno ]] || name="$suite($mode)"
    out="$TMP/$suite-$mode.out"
    log "suite $name: $CLIENTS clients x $ITERS iterations via $mode (127.0.0.1:$PGPORT)"
    logline=$( [[ $mode == pgdyno ]] && wc -l <"$TMP/pgdyno.log" || echo 0)
    t0=$(date +%s.%N)
    rc=0
    # shellcheck disable=SC2046
    timeout -k 10 "$SUITE_TIMEOUT" $(suite_cmd "$suite") >"$out" 2>&1 || rc=$?
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
    [[ $rc == 124 ]] && echo "TIMEOUT after ${SUITE_TIMEOUT}s" >>"$out"
    result=$(grep -E '^RESULT ' "$out" | tail -1 | sed 's/^RESULT //' || true)
    if [[ $rc == 0 ]] && grep -qE '^RESULT ok' "$out"; then
      PASSED=$((PASSED + 1))
      line="PASS $name (${secs}s): ${result#ok }"
    else
      FAILED=$((FAILED + 1))
      line="FAIL $name (${secs}s, exit $rc): ${result:-no result line}"
      echo "---- $name output (last 40 lines) ----"
      tail -40 "$out"
      if [[ $mode == pgdyno ]]; then
        echo "---- pgdyno log during $name (WARN/ERROR, last 30) ----"
        tail -n +"$((logline + 1))" "$TMP/pgdyno.log" | grep -E 'WARN|ERROR' | tail -30 || true
      fi
      echo "----"
    fi
    echo "$line"
    SUMMARY+=("$line")
  done
  if [[ $mode == pgdyno ]]; then
    log "PostgreSQL backends of $PGUSER now: $(backends_now) (pool size 5)"
    kill -0 "$PGDYNO_PID" 2>/dev/null || { echo "pgdyno is no longer running!"; FAILED=$((FAILED + 1)); }
  fi
done

echo
echo "Summary ($(( $(date +%s) - START_TIME ))s):"
printf '  %s\n' "${SUMMARY[@]}"
echo "$PASSED passed, $FAILED failed"
[[ $FAILED == 0 ]]
