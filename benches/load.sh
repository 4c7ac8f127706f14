#!/usr/bin/env bash
# Load benchmark: a direct connection to PostgreSQL vs PgBouncer vs pgdyno, with pgbench.
#
# One run starts a throwaway PostgreSQL (initdb into a temp dir, fsync=off,
# scram-sha-256 on 127.0.0.1), then, REPEAT times, for each scenario in
# SCENARIOS and each target in TARGETS (interleaved: every target runs a
# scenario before the next scenario starts, and the order of the targets
# rotates from one repetition to the next), starts the pooler with the
# scenario's pool size and TLS setting, runs pgbench for a short warm-up and
# then for DURATION seconds, and stops the pooler again. The scenarios:
#
#   select-simple    pgbench -S -M simple, CLIENTS (16) clients on a pool of POOL (16)
#   select-rate      select-simple held at RATE (5000) transactions per second
#                    (pgbench -R), below what either pooler serves at most:
#                    both then serve the same transactions at the same load,
#                    and the CPU per transaction is each pooler's own cost
#                    rather than its share of a saturated machine
#   select-extended  the same with -M extended
#   select-prepared  the same with -M prepared
#   select-400       pgbench -S, CLIENTS_400 (400) clients on a pool of POOL_400 (20)
#   connect          pgbench -S -C: a new connection (and SCRAM login) per
#                    transaction, CONNECT_CLIENTS (8) clients
#   tpcb             the tpcb-like script (7 statements), CLIENTS on POOL
#   tls              select-simple with TLS on both legs (sslmode=require)
#   idle             memory: each pooler's RSS with 0 and with IDLE_CLIENTS
#                    (10000) idle logged-in clients (benches/idle_clients.py)
#
# Per run it takes pgbench's tps, average latency and failed transactions,
# the 99th percentile latency from pgbench's per-transaction log (--log with
# --sampling-rate), the pooler's peak RSS (VmHWM) and CPU time from /proc:
#
#   pooler_us    the pooler process's utime+stime (all threads) per transaction
#                (for connect: per new client connection): the figure to
#                compare (see shared/PERFORMANCE.md)
#   cpu_vs_pgb   pooler_us relative to PgBouncer's in the same scenario: the
#                machine-independent form of it
#   cpu_norm     the same with each pooler_us divided first by pgbench_us of
#                its run: pgbench's work per transaction is about the same
#                whatever it talks to, so this takes out most of the drift of
#                the machine's speed between runs (all processes' CPU moves
#                together); read it with cpu_vs_pgb
#   postgres_us  postmaster + all backends, per transaction
#   pgbench_us   the pgbench client, per transaction
#   other_cpu%   busy CPU on the machine that is none of the above, as a share
#                of all cores over the run: anything above a few percent means
#                something else (a build, a test run) disturbed the figures
#
# With REPEAT > 1 the report gives each figure's median over the repetitions.
# benches/load_report.py turns the runs into the tables, the ratios against
# PgBouncer, the targets met or missed and an SVG plot.
#
# TLS: PostgreSQL gets ssl=on and a server certificate, the poolers a
# certificate for their clients and server_tls_sslmode=require toward
# PostgreSQL, pgbench connects with sslmode=require. Certificates (ECDSA
# P-256, a throwaway CA) are made at run time with the openssl CLI. TLS=1 runs
# every scenario with TLS, TLS=both each plain and then with TLS.
#
# Usage: benches/load.sh [--quick] [--write-benchmarks] [--help]
#
# Traffic goes only to 127.0.0.1. Everything started here is stopped by PID on exit.
set -Eeuo pipefail
trap 'echo "load.sh: line $LINENO: \"$BASH_COMMAND\" failed with status $?" >&2' ERR

ALL_SCENARIOS="select-simple select-rate select-extended select-prepared select-400 connect tpcb tls idle"

usage() {
  cat <<EOF
Usage: benches/load.sh [--quick] [--write-benchmarks]

Compares a direct connection to PostgreSQL, PgBouncer and pgdyno with pgbench
(transaction pooling) in named scenarios, interleaved, REPEAT times.

  --quick             the regression check before submitting a hot-path change:
                      every scenario once for a few seconds against PgBouncer
                      only (DURATION=3, WARMUP=1, REPEAT=1, IDLE_WAIT=0,
                      NOISE_RETRIES=0, TARGETS="pgbouncer pgdyno" unless set);
                      prints the ratios and says which targets pgdyno misses
  --write-benchmarks  also write BENCHMARKS.md and benches/load.svg in the
                      repository from this run
  -h, --help          this text

Scenarios (SCENARIOS, default all):
  select-simple     pgbench -S -M simple, CLIENTS clients, pool POOL
  select-rate       select-simple at a fixed RATE of transactions per second
  select-extended   pgbench -S -M extended, CLIENTS clients, pool POOL
  select-prepared   pgbench -S -M prepared, CLIENTS clients, pool POOL
  select-400        pgbench -S, CLIENTS_400 clients, pool POOL_400, JOBS_400 threads
  connect           pgbench -S -C (a login per transaction), CONNECT_CLIENTS clients
  tpcb              tpcb-like (also tpcb-extended, tpcb-prepared), CLIENTS, pool POOL
  tls               select-simple with TLS on both legs
  idle              RSS of each pooler with 0 and IDLE_CLIENTS idle clients

Environment (defaults in brackets):
  SCENARIOS          any of the above [$ALL_SCENARIOS]
  TARGETS            any of: direct pgbouncer floor pgdyno
                     ["direct pgbouncer floor pgdyno"]; floor is the cheapest
                     relay tokio allows (benches/tokio_floor.rs: a PostgreSQL
                     connection per client, bytes copied both ways, nothing
                     parsed or pooled), run where it relays like a pooler
                     (not in select-400, connect or tls)
  REPEAT             repetitions of every scenario; the report gives medians [1]
  DURATION           seconds per measured pgbench run [15]
  WARMUP             seconds of unmeasured pgbench before each run [3]
  CLIENTS            pgbench clients in the 16-client scenarios [16]
  JOBS               pgbench threads (-j) in those [2]
  POOL               pool size of both poolers in those [16]
  RATE               transactions per second of select-rate (pgbench -R); a
                     run that falls 5% short of it is reported behind-rate
                     and left out of the ratios [5000]
  CLIENTS_400        clients of select-400 [400]
  POOL_400           pool size of select-400 [20]
  JOBS_400           pgbench threads of select-400 [8]
  CONNECT_CLIENTS    clients of connect [8]
  IDLE_CLIENTS       idle clients of idle, capped by the open files limit [10000]
  SAMPLING           pgbench --sampling-rate for the p99 latency
                     [0.1; connect 1, tpcb 0.5]
  SCALE              pgbench -i scale factor [10]
  MODES, SCRIPT      the old knobs: without SCENARIOS, SCRIPT=select|tpcb and
                     MODES="simple extended prepared" pick the scenarios
                     SCRIPT-MODE (tpcb-simple is tpcb)
  TLS                0: as the scenarios say (only tls has TLS); 1: every
                     scenario with TLS (sslmode=require) from pgbench to the
                     pooler and from the pooler to PostgreSQL; both: each
                     scenario plain and then with TLS. Ratios compare runs of
                     the same TLS setting. [0]
  PGDYNO_BIN         use this pgdyno binary instead of building one
  PGO                1: build pgdyno with scripts/pgo-build.sh (profile-guided,
                     the binary to run in production); 0: plain
                     \`cargo build --release\` [1]
  PGDYNO_EXTRA_ARGS  extra arguments appended to pgdyno's command line
  IDLE_WAIT          seconds to wait, before each run, for other load on the
                     machine to stop (0: don't wait) [60]
  NOISE_MAX          a run in which other processes used more than this percent
                     of the CPUs counts as disturbed [5]
  NOISE_RETRIES      measure a disturbed run again up to this many times and
                     keep the least disturbed one [2]
  RESULTS_DIR        where the .md/.csv/.svg results and logs go [benches/results]
  KEEP_TMP           1 keeps the temporary data directory [0]
EOF
}

QUICK=0 WRITE_BENCHMARKS=0
for arg in "$@"; do
  case $arg in
    --quick) QUICK=1 ;;
    --write-benchmarks) WRITE_BENCHMARKS=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "load.sh: unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

# The knobs given in the environment, for the report's command line.
KNOBS="SCENARIOS TARGETS REPEAT DURATION WARMUP CLIENTS JOBS POOL RATE CLIENTS_400 POOL_400 JOBS_400
  CONNECT_CLIENTS IDLE_CLIENTS SAMPLING SCALE MODES SCRIPT TLS PGDYNO_BIN PGO PGDYNO_EXTRA_ARGS
  IDLE_WAIT NOISE_MAX NOISE_RETRIES RESULTS_DIR KEEP_TMP"
COMMAND=""
for v in $KNOBS; do
  if [[ -n ${!v+set} ]]; then COMMAND+="$v=${!v@Q} "; fi
done
COMMAND+="benches/load.sh${*:+ $*}"

if [[ $QUICK == 1 ]]; then
  DURATION=${DURATION:-3} WARMUP=${WARMUP:-1} REPEAT=${REPEAT:-1}
  IDLE_WAIT=${IDLE_WAIT:-0} NOISE_RETRIES=${NOISE_RETRIES:-0}
  TARGETS=${TARGETS:-pgbouncer pgdyno}
fi
DURATION=${DURATION:-15}
WARMUP=${WARMUP:-3}
REPEAT=${REPEAT:-1}
CLIENTS=${CLIENTS:-16}
JOBS=${JOBS:-2}
POOL=${POOL:-16}
RATE=${RATE:-5000}
CLIENTS_400=${CLIENTS_400:-400}
POOL_400=${POOL_400:-20}
JOBS_400=${JOBS_400:-8}
CONNECT_CLIENTS=${CONNECT_CLIENTS:-8}
IDLE_CLIENTS=${IDLE_CLIENTS:-10000}
SAMPLING=${SAMPLING:-}
SCALE=${SCALE:-10}
TARGETS=${TARGETS:-direct pgbouncer floor pgdyno}
TLS=${TLS:-0}
PGDYNO_BIN=${PGDYNO_BIN:-}
PGO=${PGO:-1}
PGDYNO_EXTRA_ARGS=${PGDYNO_EXTRA_ARGS:-}
KEEP_TMP=${KEEP_TMP:-0}
IDLE_WAIT=${IDLE_WAIT:-60}
NOISE_RETRIES=${NOISE_RETRIES:-2}
NOISE_MAX=${NOISE_MAX:-5}
MAX_CLIENT_CONN=1000
DB=bench
DBUSER=bench

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS_DIR=${RESULTS_DIR:-$REPO/benches/results}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- validation

for v in DURATION REPEAT CLIENTS JOBS POOL RATE CLIENTS_400 POOL_400 JOBS_400 CONNECT_CLIENTS IDLE_CLIENTS SCALE; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
for v in WARMUP IDLE_WAIT NOISE_RETRIES NOISE_MAX; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
done
if [[ -n $SAMPLING ]] && ! awk -v s="$SAMPLING" 'BEGIN { exit !(s ~ /^[0-9.]+$/ && s > 0 && s <= 1) }'; then
  die "SAMPLING must be a number in (0, 1], got '$SAMPLING'"
fi
for t in $TARGETS; do
  case $t in direct | pgbouncer | floor | pgdyno) ;; *) die "unknown target '$t' in TARGETS" ;; esac
done
has_target() { [[ " $TARGETS " == *" $1 "* ]]; }

# The old knobs: SCRIPT and MODES name the scenarios when SCENARIOS does not.
if [[ -z ${SCENARIOS:-} ]]; then
  if [[ -n ${MODES:-} || -n ${SCRIPT:-} ]]; then
    SCENARIOS=""
    for m in ${MODES:-simple extended}; do SCENARIOS+="${SCRIPT:-select}-$m "; done
  else
    SCENARIOS=$ALL_SCENARIOS
  fi
fi
SCENARIOS=${SCENARIOS//tpcb-simple/tpcb}
for s in $SCENARIOS; do
  case $s in
    select-simple | select-rate | select-extended | select-prepared | select-400 | connect | tpcb | tpcb-extended | tpcb-prepared | tls | idle) ;;
    *) die "unknown scenario '$s' in SCENARIOS (see --help)" ;;
  esac
done
has_scenario() { [[ " $SCENARIOS " == *" $1 "* ]]; }
case $TLS in
  0) TLS_RUNS=off ;;
  1) TLS_RUNS=on ;;
  both) TLS_RUNS="off on" ;;
  *) die "TLS must be 0, 1 or both, got '$TLS'" ;;
esac
[[ $PGO == 0 || $PGO == 1 ]] || die "PGO must be 0 or 1, got '$PGO'"

# The pgbench runs as scenario:tls units, in order; idle is measured apart.
UNITS=()
for s in $SCENARIOS; do
  case $s in
    idle) ;;
    tls)
      if [[ $TLS != 0 ]] && has_scenario select-simple; then
        log "scenario tls is select-simple with TLS, which TLS=$TLS runs already; skipping it"
      else
        UNITS+=("tls:on")
      fi
      ;;
    *) for t in $TLS_RUNS; do UNITS+=("$s:$t"); done ;;
  esac
done
TLS_ANY=0
[[ " ${UNITS[*]} " == *:on\ * ]] && TLS_ANY=1
RUN_IDLE=0
if has_scenario idle && { has_target pgbouncer || has_target pgdyno; }; then RUN_IDLE=1; fi
((${#UNITS[@]} > 0 || RUN_IDLE == 1)) || die "nothing to run: SCENARIOS='$SCENARIOS', TARGETS='$TARGETS'"

# Sets the S_* variables of a scenario: pgbench's script arguments, query
# mode, clients, threads, the pool size, -C or not, the log sampling rate,
# the fixed rate (0: as fast as it goes).
scenario_setup() {
  S_NAME=$1 S_MODE=simple S_CLIENTS=$CLIENTS S_JOBS=$JOBS S_POOL=$POOL S_CONNECT=0 S_SAMPLING=0.1 S_RATE=0
  S_SCRIPT_ARGS=(-S)
  case $1 in
    select-simple | tls) ;;
    select-rate) S_RATE=$RATE ;;
    select-extended) S_MODE=extended ;;
    select-prepared) S_MODE=prepared ;;
    select-400) S_CLIENTS=$CLIENTS_400 S_JOBS=$JOBS_400 S_POOL=$POOL_400 ;;
    connect) S_CLIENTS=$CONNECT_CLIENTS S_CONNECT=1 S_SAMPLING=1 ;;
    tpcb | tpcb-extended | tpcb-prepared)
      S_SCRIPT_ARGS=() S_SAMPLING=0.5
      [[ $1 == tpcb ]] || S_MODE=${1#tpcb-}
      ;;
  esac
  [[ -z $SAMPLING ]] || S_SAMPLING=$SAMPLING
  ((S_JOBS <= S_CLIENTS)) || S_JOBS=$S_CLIENTS
  # pgbench prepares its statements with a blocking call, so a thread whose
  # client waits for a backend held by another client of the same thread
  # never gets on: with more clients than backends, a thread per client.
  if [[ $S_MODE == prepared ]] && ((S_CLIENTS > S_POOL)); then S_JOBS=$S_CLIENTS; fi
}

# The largest number of clients a direct run opens: PostgreSQL's
# max_connections must hold them, the poolers' pools and a few more.
MAX_DIRECT=0
if has_target direct; then
  for u in "${UNITS[@]}"; do
    scenario_setup "${u%%:*}"
    ((S_CLIENTS <= MAX_DIRECT)) || MAX_DIRECT=$S_CLIENTS
  done
fi
PG_MAX_CONNECTIONS=$((MAX_DIRECT + 30 > 200 ? MAX_DIRECT + 30 : 200))
# ---------------------------------------------------------------- tools

# A PostgreSQL program: from PATH, else from the newest /usr/lib/postgresql/*/bin.
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

if [[ $EUID == 0 ]] && { ! pgtool initdb >/dev/null || ! pgtool pgbench >/dev/null ||
  { has_target pgbouncer && [[ ! -x /usr/sbin/pgbouncer ]]; }; }; then
  log "installing PostgreSQL/PgBouncer with apt-get"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer postgresql >&2
fi
INITDB=$(pgtool initdb) || die "initdb not found (apt-get install postgresql)"
POSTGRES=$(pgtool postgres) || die "postgres not found (apt-get install postgresql)"
PSQL=$(pgtool psql) || die "psql not found"
PGBENCH=$(pgtool pgbench) || die "pgbench not found"
PG_ISREADY=$(pgtool pg_isready) || die "pg_isready not found"
OPENSSL=none
if ((TLS_ANY)); then
  OPENSSL=$(command -v openssl) || die "TLS needs the openssl command (apt-get install openssl)"
fi
PYTHON=$(command -v python3) || die "python3 not found: the report and the idle clients need it (apt-get install python3)"
PGBOUNCER=/usr/sbin/pgbouncer
PGB_VERSION=none
if has_target pgbouncer; then
  [[ -x $PGBOUNCER ]] || die "$PGBOUNCER not found (apt-get install pgbouncer)"
  PGB_VERSION=$("$PGBOUNCER" --version | awk 'NR == 1 { print $2 }')
fi
CLK_TCK=$(getconf CLK_TCK)
NCPU=$(nproc)

# Services run as `nobody` when we are root (PostgreSQL and PgBouncer refuse root).
AS_SVC=()
if [[ $EUID == 0 ]]; then
  AS_SVC=(setpriv --reuid="$(id -u nobody)" --regid="$(id -g nobody)" --clear-groups --)
fi
# Each pooler runs in a session of its own, as a service does. In this
# script's session it would share pgbench's CPU group (Linux's autogroup
# puts each session in one, and PostgreSQL's backends each start their
# own): pgbench's threads would then take CPU from the pooler rather than
# from PostgreSQL, and the pooler would be preempted twice as often.
# setsid execs in place here (no job control, so no process group leader):
# $! stays the pooler's PID.
AS_POOLER=(setsid)

# A pooler wants a file descriptor per client and per backend, and so does
# the idle clients' process: IDLE_CLIENTS of each, and some to spare.
NOFILE_WANT=4096
if ((RUN_IDLE && IDLE_CLIENTS + 256 > NOFILE_WANT)); then NOFILE_WANT=$((IDLE_CLIENTS + 256)); fi
if [[ $(ulimit -n) != unlimited ]] && (($(ulimit -n) < NOFILE_WANT)); then
  ulimit -n "$NOFILE_WANT" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null ||
    log "warning: could not raise the open files limit to $NOFILE_WANT"
fi
if [[ $(ulimit -n) != unlimited ]] && ((RUN_IDLE && IDLE_CLIENTS + 256 > $(ulimit -n))); then
  log "warning: the open files limit is $(ulimit -n); idle measures $(($(ulimit -n) - 256)) clients, not $IDLE_CLIENTS"
  IDLE_CLIENTS=$(($(ulimit -n) - 256))
  ((IDLE_CLIENTS > 0)) || die "the open files limit ($(ulimit -n)) leaves no room for idle clients"
fi

# ---------------------------------------------------------------- state and cleanup

STAMP=$(date +%Y%m%d-%H%M%S)
WORK=$(mktemp -d /tmp/pgdyno-bench.XXXXXX)
chmod 755 "$WORK"
cd "$WORK" # services started as nobody need a readable working directory
PG_PID="" PGB_PID="" DYN_PID="" FLOOR_PID="" BENCH_PID="" IDLE_PID=""
PGDATA=$WORK/pgdata
SOCKDIR=$WORK/sock
TLS_DIR=$WORK/tls
TLS_NOTES=$WORK/tls-notes
# The TLS setting of the runs under way (set_tls): on|off, the sslmode pgbench
# and psql use, and a suffix for file names and log labels.
TLS_NOW=off SSLMODE=disable SSLROOTCERT="" TLS_SUFFIX=""
# What the next pooler's log file names carry: scenario, TLS, repetition.
LOG_TAG=""
# The pool size and client limit the next pooler starts with.
CUR_POOL=$POOL CUR_MAX_CLIENT_CONN=$MAX_CLIENT_CONN
ROWS=$WORK/rows.tsv
IDLE_ROWS=$WORK/idle.tsv
printf '%s\n' "rep scenario tls target mode clients jobs pool connect tps latency_ms p99_ms failed transactions conn_ms samples pooler_ticks pooler_sys_ticks has_pooler postgres_ticks pgbench_ticks busy_ticks steal_ticks wall_us other_pml status top_other_processes attempts pooler_hwm_kb" | tr ' ' '\t' >"$ROWS"
printf '%s\n' "rep target clients ok failed login_s rss0_kb rss_kb hwm_kb fds0 fds login_ticks status" | tr ' ' '\t' >"$IDLE_ROWS"
STARTED_OK=1
# True while PID exists and is not a zombie.
alive() {
  local s
  read -r s 2>/dev/null <"/proc/$1/stat" || return 1
  s=${s##*) }
  [[ ${s:0:1} != Z ]]
}

# Sends SIG to PID, waits up to 10 s, then SIGKILL. Only PIDs this script started.
stop_pid() {
  local pid=$1 name=$2 sig=$3 i
  [[ -n $pid ]] || return 0
  if alive "$pid"; then
    kill -s "$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      alive "$pid" || break
      sleep 0.1
    done
    if alive "$pid"; then
      log "$name (pid $pid) did not stop on SIG$sig; sending SIGKILL"
      kill -s KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
}

save_logs() {
  local dest=$RESULTS_DIR/load-$STAMP.logs f
  mkdir -p "$dest"
  for f in "$WORK"/*.log "$WORK"/pgbench-*.out; do
    [[ -f $f ]] || continue
    # pgbouncer writes the same lines to its logfile and to stderr
    [[ $f == *.stderr.log ]] && cmp -s "$f" "${f%.stderr.log}.log" && continue
    tail -n 5000 "$f" >"$dest/$(basename "$f")"
  done
  printf '%s\n' "$dest"
}

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  stop_pid "$BENCH_PID" pgbench TERM
  stop_pid "$IDLE_PID" idle_clients TERM
  stop_pid "$DYN_PID" pgdyno INT # SIGTERM would wait for clients to leave
  stop_pid "$FLOOR_PID" floor TERM
  stop_pid "$PGB_PID" pgbouncer TERM
  stop_pid "$PG_PID" postgres INT # fast shutdown
  if [[ -d $WORK ]]; then
    if ((rc != 0)) && compgen -G "$WORK/*.log" >/dev/null; then
      log "failed (exit $rc); logs kept in $(save_logs)"
    fi
    cd /
    if [[ $KEEP_TMP == 1 ]]; then
      log "temporary directory kept: $WORK"
    else
      rm -rf "$WORK"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- helpers
# A TCP port on 127.0.0.1 that nothing listens on, below the ephemeral range.
USED_PORTS=" "
free_port() {
  local p i
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 12000))
    [[ $USED_PORTS == *" $p "* ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      USED_PORTS+="$p "
      printf '%s\n' "$p"
      return
    fi
  done
  die "no free port found"
}

# Superuser SQL over the private Unix socket.
pg_admin() {
  "$PSQL" -h "$SOCKDIR" -p "$PG_PORT" -U postgres -d "${PGA_DB:-postgres}" -X -q -A -t -v ON_ERROR_STOP=1 "$@"
}

# Waits until a client can log in as $DBUSER on PORT and run a query.
wait_login() {
  local port=$1 name=$2 pid=$3 logf=$4 i
  for ((i = 0; i < 300; i++)); do
    if ! alive "$pid"; then
      log "$name exited during startup; last lines of $logf:"
      tail -n 30 "$logf" >&2 || true
      return 1
    fi
    if PGPASSWORD=$PGPASS PGCONNECT_TIMEOUT=3 PGSSLMODE=$SSLMODE PGSSLROOTCERT=$SSLROOTCERT \
      "$PSQL" -h 127.0.0.1 -p "$port" -U "$DBUSER" -d "$DB" -X -q -A -t -c 'SELECT 1' >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  log "$name did not accept a login on port $port within 30 s; last lines of $logf:"
  tail -n 30 "$logf" >&2 || true
  return 1
}

# One line per process: pid ppid own_ticks children_ticks sys_ticks comm, where
# own = utime+stime (all threads), children = cutime+cstime of reaped
# children and sys = stime.
proc_snapshot() {
  local d s f comm
  for d in /proc/[0-9]*; do
    read -r s 2>/dev/null <"$d/stat" || continue
    comm=${s%%) *}
    comm=${comm#*(}
    comm=${comm//[ ,;=]/_}
    read -ra f <<<"${s##*) }" # fields from 3 (state) on; comm may hold spaces
    printf '%s %s %s %s %s %s\n' "${d#/proc/}" "${f[1]}" $((f[11] + f[12])) $((f[13] + f[14])) "${f[12]}" "$comm"
  done
}

# PostgreSQL's child processes with their states, e.g. "123S 456R 789Z".
pg_children() {
  local d s f out=""
  for d in /proc/[0-9]*; do
    read -r s 2>/dev/null <"$d/stat" || continue
    read -ra f <<<"${s##*) }"
    [[ ${f[1]} == "$PG_PID" ]] && out+="${d#/proc/}${f[0]} "
  done
  printf '%s\n' "$out"
}

# Waits (up to 5 s) until no PostgreSQL backend is starting or exiting: the
# same children twice in a row, none a zombie. A snapshot taken while a
# backend is being reaped would count its CPU twice or not at all.
pg_quiesce() {
  local prev="" cur i
  for ((i = 0; i < 50; i++)); do
    cur=$(pg_children)
    if [[ $cur == "$prev" && $cur != *Z\ * ]]; then return 0; fi
    prev=$cur
    sleep 0.1
  done
  log "warning: PostgreSQL's backends did not settle; CPU figures of this run may be off"
}

# From two snapshots: "pooler_ticks pooler_sys_ticks postgres_ticks others", where
# - the pooler counts its own and its children's ticks (-1 if it is not in
#   both snapshots), and its system time separately;
# - PostgreSQL is the postmaster (whose children ticks collect exited
#   backends) plus every live child;
# - others lists the three other processes (kernel threads included) that
#   used the most CPU in between, as comm=seconds;seconds... ("-" if none).
# Processes that began and ended between the snapshots are not seen.
cpu_deltas() {
  awk -v pg="$PG_PID" -v pooler="${3:-none}" -v self="$$" -v hz="$CLK_TCK" '
    # PostgreSQL and the pooler: total(snapshot 2) - total(snapshot 1), so that
    # a backend that exits in between is counted once (in the children ticks
    # of the postmaster) and its ticks from before are taken off.
    FNR == NR {
      own0[$1] = $3
      if ($1 == pooler) { pt -= $3 + $4; ps -= $5; seen++ }
      if ($1 == pg) gt -= $3 + $4
      if ($2 == pg) gt -= $3
      next
    }
    {
      pid = $1
      if (pid == pooler) { pt += $3 + $4; ps += $5; seen++; next }
      if (pid == pg) { gt += $3 + $4; next }
      if ($2 == pg) { gt += $3; next }
      d = $3 - own0[pid]
      if (pid != self && d > 0) { other[pid] = d; name[pid] = $6 }
    }
    END {
      top = ""
      for (k = 0; k < 3; k++) {
        best = ""; for (p in other) if (best == "" || other[p] > other[best]) best = p
        if (best == "") break
        top = top (top == "" ? "" : ";") sprintf("%s=%.2fs", name[best], other[best] / hz)
        delete other[best]
      }
      if (seen != 2) pt = ps = -1
      printf "%d %d %d %s\n", pt, ps, gt, (top == "" ? "-" : top)
    }' "$1" "$2"
}

# Ticks of the whole machine (all cores) from /proc/stat: SYS_BUSY =
# user+nice+system+irq+softirq, which is what processes' utime+stime add up
# to (the kernel counts the softirq time of loopback TCP in /proc/stat's
# softirq column but also in the runtime of the process it interrupted),
# and SYS_STEAL, the time the hypervisor gave our vCPUs away.
# Sets the variables rather than printing them: no subshell, no child.
sys_ticks() {
  local user nice system irq softirq steal _
  read -r _ user nice system _ _ irq softirq steal _ </proc/stat
  SYS_BUSY=$((user + nice + system + irq + softirq)) SYS_STEAL=$steal
}

# Waits up to IDLE_WAIT seconds for the machine to be idle (under 10% busy
# over one second; nothing of ours runs then), so that a build or a test run
# elsewhere does not land in the measurement.
wait_idle() {
  local b0 i busy waited=0
  for ((i = 0; i <= IDLE_WAIT; i++)); do
    sys_ticks
    b0=$SYS_BUSY
    sleep 1
    sys_ticks
    busy=$(((SYS_BUSY - b0) * 100 / (CLK_TCK * NCPU)))
    ((busy >= 10)) || return 0
    if ((waited == 0)); then log "machine is ${busy}% busy; waiting up to ${IDLE_WAIT}s for it to go idle"; fi
    waited=1
  done
  log "warning: machine still ${busy}% busy; measuring anyway"
}

# Maintenance pgbench would do itself (we pass -n so that no target sees it),
# then a checkpoint and a sync so that the kernel does not write back dirty
# pages (fsync=off leaves them all to it) during the measured run.
pg_prepare_run() {
  PGA_DB=$DB pg_admin -c 'VACUUM pgbench_branches' -c 'VACUUM pgbench_tellers' \
    -c 'TRUNCATE pgbench_history' -c 'CHECKPOINT'
  sync -f "$PGDATA"
}

# Seconds that pgbench -T needs on top of the run for its clients to log in
# (pgbench counts the time from before its connections, and a SCRAM login
# costs libpq some milliseconds of CPU, a direct connection a backend too):
# none for a few clients; for many, 1.5 times the initial connection time
# pgbench reported in OUT (the warm-up's), else a generous 30 ms per client
# and core.
connect_slack() {
  local out=${1:-} cores=$((S_JOBS < NCPU ? S_JOBS : NCPU)) ms=""
  if ((S_CONNECT || S_CLIENTS < 64)); then
    echo 0
    return
  fi
  if [[ -n $out && -f $out ]]; then
    ms=$(awk '/^initial connection time =/ { printf "%d\n", $5 }' "$out")
  fi
  if [[ -n $ms ]]; then echo $((ms * 3 / 2000 + 1)); else echo $((S_CLIENTS * 30 / 1000 / cores + 1)); fi
}

# Sets P_ARGS to pgbench's arguments for the current scenario (S_*) run for
# SECS seconds: what start_pgbench runs and measure logs.
pgbench_args() {
  P_ARGS=(-c "$S_CLIENTS" -j "$S_JOBS" -T "$1" -M "$S_MODE" "${S_SCRIPT_ARGS[@]}")
  if ((S_CONNECT)); then P_ARGS+=(-C); fi
  if ((S_RATE)); then P_ARGS+=(-R "$S_RATE"); fi
}

# Starts pgbench in the background for the current scenario (S_*) against
# PORT for SECS seconds with its output in OUT and, given LOGPREFIX, a
# sampled per-transaction log in LOGPREFIX.*. Sets BENCH_PID.
start_pgbench() {
  local port=$1 secs=$2 out=$3 logprefix=${4:-}
  pgbench_args "$secs"
  local -a args=(-n "${P_ARGS[@]}")
  if [[ -n $logprefix ]]; then
    rm -f "$logprefix".*
    args+=(--log --log-prefix="$logprefix" --sampling-rate="$S_SAMPLING")
  fi
  times >"$WORK/times0"
  PGPASSWORD=$PGPASS PGSSLMODE=$SSLMODE PGSSLROOTCERT=$SSLROOTCERT "$PGBENCH" -h 127.0.0.1 -p "$port" \
    -U "$DBUSER" "${args[@]}" "$DB" >"$out" 2>&1 &
  BENCH_PID=$!
}

# Waits for the pgbench of start_pgbench and returns its status; sets
# BENCH_TICKS to its CPU time (user+sys, all threads): the difference in this
# shell's children times, so pgbench must be the only child reaped in
# between. Waits in the background so that a signal to this script is
# handled at once.
finish_pgbench() {
  local rc=0
  wait "$BENCH_PID" || rc=$?
  BENCH_PID=""
  times >"$WORK/times1"
  # 2nd line of `times` (children): "0m1.234s 0m0.567s"
  BENCH_TICKS=$(awk -v hz="$CLK_TCK" 'FNR == 2 {
      for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); t[FILENAME] += a[1] * 60 + a[2] }
    }
    END { printf "%d\n", (t[ARGV[2]] - t[ARGV[1]]) * hz + 0.5 }' "$WORK/times0" "$WORK/times1")
  return "$rc"
}

# An unmeasured pgbench run (the warm-up).
run_pgbench() {
  start_pgbench "$@"
  finish_pgbench
}

# Waits until the running pgbench has a socket per client, that is, until it
# has opened all its connections and starts its transactions (up to 120 s).
wait_connected() {
  local i n
  for ((i = 0; i < 6000; i++)); do
    alive "$BENCH_PID" || return 0
    # pgbench opens and closes files as it connects: find may miss some
    n=$({ find "/proc/$BENCH_PID/fd" -mindepth 1 -maxdepth 1 -lname 'socket:*' 2>/dev/null || true; } | wc -l)
    ((n < S_CLIENTS)) || return 0
    sleep 0.02
  done
  log "warning: pgbench did not connect its $S_CLIENTS clients within 120 s"
}

# "p99_ms samples" from pgbench's per-transaction logs LOGPREFIX.* (the third
# field is the latency in µs; failed and skipped transactions have a word
# there), "NA 0" without samples. Removes the logs.
txlog_p99() {
  local prefix=$1 f
  local -a files=()
  for f in "$prefix".*; do [[ -f $f ]] && files+=("$f"); done
  if ((${#files[@]} == 0)); then
    echo "NA 0"
    return
  fi
  awk '$3 ~ /^[0-9]+$/ { print $3 }' "${files[@]}" | sort -n |
    awk '{ v[NR] = $1 } END {
      if (NR == 0) { print "NA 0"; exit }
      i = int(NR * 0.99); if (i < NR * 0.99) i++; if (i < 1) i = 1
      printf "%.3f %d\n", v[i] / 1000, NR }'
  rm -f "${files[@]}"
}

# A field of /proc/PID/status in kB (VmRSS, VmHWM), NA if PID is gone.
status_kb() {
  awk -v k="$2:" '$1 == k { print $2; found = 1 } END { if (!found) print "NA" }' "/proc/$1/status" 2>/dev/null || echo NA
}

# The open file descriptors of PID.
count_fds() {
  { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null || true; } | wc -l
}

# utime+stime+cutime+cstime of PID in ticks.
pid_ticks() {
  local s
  local -a f
  # 0 for a process already gone (pgbench exits at once when PgBouncer
  # 1.18 refuses -M prepared)
  read -r s 2>/dev/null <"/proc/$1/stat" || { echo 0; return 0; }
  read -ra f <<<"${s##*) }"
  echo $((f[11] + f[12] + f[13] + f[14]))
}

# ---------------------------------------------------------------- pgdyno build

PGDYNO_BUILT=0
if has_target pgdyno; then
  if [[ -z $PGDYNO_BIN ]]; then
    PGDYNO_BUILT=1
    if [[ $PGO == 1 ]]; then
      log "building pgdyno (scripts/pgo-build.sh: a profile-guided release build)"
      "$REPO/scripts/pgo-build.sh" >&2 ||
        die "scripts/pgo-build.sh failed; PGO=0 builds without a profile"
      PGDYNO_BIN=${CARGO_TARGET_DIR:-$REPO/target}/pgo/release/pgdyno
    else
      log "building pgdyno (cargo build --release)"
      (cd "$REPO" && cargo build --release >&2) ||
        die "cargo build --release failed; run without pgdyno (TARGETS=\"direct pgbouncer\") or set PGDYNO_BIN"
      PGDYNO_BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/pgdyno
    fi
  fi
  [[ -x $PGDYNO_BIN ]] || die "pgdyno binary not found: $PGDYNO_BIN"
fi
if has_target floor; then
  log "building the tokio floor relay (cargo build --release --example tokio_floor)"
  (cd "$REPO" && cargo build --release --example tokio_floor >&2) ||
    die "cargo build --release --example tokio_floor failed; run without floor (TARGETS=\"direct pgbouncer pgdyno\")"
  FLOOR_BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/examples/tokio_floor
fi

# ---------------------------------------------------------------- TLS

# A throwaway CA and two certificates it signs for 127.0.0.1 and localhost:
# postgres.crt for PostgreSQL and pooler.crt for the poolers' clients. ECDSA
# P-256 with PKCS#8 keys, mode 0600 and owned by the user the services run
# as (PostgreSQL refuses a key that others can read).
make_certs() {
  local name
  mkdir -p "$TLS_DIR"
  chmod 755 "$TLS_DIR"
  cat >"$TLS_DIR/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = pgdyno bench
[bench_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[bench_leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
  (
    set -e
    cd "$TLS_DIR"
    umask 077
    "$OPENSSL" genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key
    "$OPENSSL" req -new -x509 -config openssl.cnf -extensions bench_ca -key ca.key \
      -subj "/CN=pgdyno bench CA" -days 2 -out ca.crt
    for name in postgres pooler; do
      "$OPENSSL" genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$name.key"
      "$OPENSSL" req -new -config openssl.cnf -key "$name.key" -subj "/CN=localhost" -out "$name.csr"
      "$OPENSSL" x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key \
        -set_serial "0x$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')" -days 2 \
        -extfile openssl.cnf -extensions bench_leaf -out "$name.crt"
    done
    "$OPENSSL" verify -CAfile ca.crt -purpose sslserver postgres.crt pooler.crt
    rm -f ./*.csr
  ) >"$WORK/openssl.log" 2>&1 || { tail -n 30 "$WORK/openssl.log" >&2; die "making certificates with openssl failed"; }
  chmod 644 "$TLS_DIR"/*.crt
  chmod 600 "$TLS_DIR"/*.key
  if [[ $EUID == 0 ]]; then chown nobody: "$TLS_DIR"/postgres.* "$TLS_DIR"/pooler.*; fi
}

# Switches the runs that follow to TLS on or off. With TLS, pgbench and psql
# use sslmode=require; PGSSLROOTCERT names our CA so that a
# ~/.postgresql/root.crt cannot get in the way (with a root certificate at
# hand, libpq's require also checks the chain, as verify-ca does).
set_tls() {
  TLS_NOW=$1
  if [[ $TLS_NOW == on ]]; then
    SSLMODE=require SSLROOTCERT=$TLS_DIR/ca.crt TLS_SUFFIX=-tls
  else
    SSLMODE=disable SSLROOTCERT="" TLS_SUFFIX=""
  fi
}

# "" if the pooler's backends use TLS as the current setting says, else a
# status for the row: backend-plain (TLS on but some backend in plaintext,
# or no backend found) or backend-tls (TLS off but some backend encrypted).
backend_tls_status() {
  local n_tls n_plain
  read -r n_tls n_plain < <(pg_admin -F ' ' -c "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
      FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.usename = '$DBUSER'")
  if [[ $TLS_NOW == on ]] && ((n_plain > 0 || n_tls == 0)); then
    printf 'backend-plain(%s/%s)\n' "$n_plain" "$((n_tls + n_plain))"
  elif [[ $TLS_NOW == off ]] && ((n_tls > 0)); then
    printf 'backend-tls(%s/%s)\n' "$n_tls" "$((n_tls + n_plain))"
  fi
}

# A line for the report: the TLS version and cipher psql gets from PORT and,
# for a pooler, those of its backends now (pg_stat_ssl), with their counts.
tls_note() {
  local target=$1 port=$2 pooler_pid=$3 client backends
  client=$(PGPASSWORD=$PGPASS PGSSLMODE=$SSLMODE PGSSLROOTCERT=$SSLROOTCERT "$PSQL" -h 127.0.0.1 -p "$port" \
    -U "$DBUSER" -d "$DB" -X -c '\conninfo' 2>&1 | sed -n 's/^SSL connection (protocol: \([^,]*\), cipher: \([^,)]*\).*/\1 \2/p')
  printf -- '- tls=%s %s: client %s' "$TLS_NOW" "$target" "${client:-plaintext}"
  if [[ -n $pooler_pid ]]; then
    backends=$(pg_admin -c "SELECT string_agg(t || ' x' || n, ', ') FROM (
        SELECT CASE WHEN s.ssl THEN s.version || ' ' || s.cipher ELSE 'plaintext' END AS t, count(*) AS n
        FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.usename = '$DBUSER' GROUP BY 1) q")
    printf '; backends %s' "${backends:-none}"
  fi
  printf '\n'
}

# ---------------------------------------------------------------- PostgreSQL

PG_PORT=$(free_port)
PGPASS=pw$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n') # hex only: safe in a URL and in config files
mkdir -p "$PGDATA" "$SOCKDIR"
if [[ $EUID == 0 ]]; then chown nobody: "$PGDATA" "$SOCKDIR"; fi
chmod 700 "$PGDATA"

log "initdb ($("$POSTGRES" --version)) in $PGDATA"
"${AS_SVC[@]}" "$INITDB" -D "$PGDATA" -U postgres -E UTF8 --no-locale \
  --auth-local=trust --auth-host=scram-sha-256 >"$WORK/initdb.log" 2>&1 ||
  { tail -n 30 "$WORK/initdb.log" >&2; die "initdb failed"; }
cat >>"$PGDATA/postgresql.conf" <<EOF

# benches/load.sh
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$SOCKDIR'
max_connections = $PG_MAX_CONNECTIONS
fsync = off
full_page_writes = off
shared_buffers = 256MB
password_encryption = 'scram-sha-256'
EOF
if ((TLS_ANY)); then
  make_certs
  cat >>"$PGDATA/postgresql.conf" <<EOF
ssl = on
ssl_cert_file = '$TLS_DIR/postgres.crt'
ssl_key_file = '$TLS_DIR/postgres.key'
EOF
fi

"${AS_SVC[@]}" "$POSTGRES" -D "$PGDATA" >"$WORK/postgres.log" 2>&1 &
PG_PID=$!
for ((i = 0; i < 300; i++)); do
  alive "$PG_PID" || { tail -n 30 "$WORK/postgres.log" >&2; die "postgres exited during startup"; }
  "$PG_ISREADY" -q -h 127.0.0.1 -p "$PG_PORT" && break
  sleep 0.1
done
"$PG_ISREADY" -q -h 127.0.0.1 -p "$PG_PORT" || die "postgres did not start within 30 s"
log "postgres pid $PG_PID on 127.0.0.1:$PG_PORT"

pg_admin -c "CREATE ROLE $DBUSER LOGIN PASSWORD '$PGPASS'" -c "CREATE DATABASE $DB OWNER $DBUSER"
log "pgbench -i -s $SCALE"
PGPASSWORD=$PGPASS PGSSLMODE=disable "$PGBENCH" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PG_PORT" -U "$DBUSER" "$DB" \
  >"$WORK/pgbench-init.log" 2>&1 || { tail -n 30 "$WORK/pgbench-init.log" >&2; die "pgbench -i failed"; }
SCRAM_SECRET=$(pg_admin -c "SELECT rolpassword FROM pg_authid WHERE rolname = '$DBUSER'")
[[ $SCRAM_SECRET == SCRAM-SHA-256* ]] || die "unexpected password hash for $DBUSER"

# ---------------------------------------------------------------- poolers

# PgBouncer in transaction mode. userlist.txt holds the SCRAM secret from
# pg_authid, so client logins are cheap (a plain password would make
# PgBouncer re-derive the keys on every login) and PgBouncer logs in to
# PostgreSQL with the client's SCRAM keys.
start_pgbouncer() {
  local dir=$WORK/pgbouncer
  PGB_PORT=$(free_port)
  mkdir -p "$dir"
  printf '"%s" "%s"\n' "$DBUSER" "$SCRAM_SECRET" >"$dir/userlist.txt"
  cat >"$dir/pgbouncer.ini" <<EOF
[databases]
$DB = host=127.0.0.1 port=$PG_PORT dbname=$DB

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $dir/userlist.txt
pool_mode = transaction
default_pool_size = $CUR_POOL
max_client_conn = $CUR_MAX_CLIENT_CONN
ignore_startup_parameters = extra_float_digits
logfile = $WORK/pgbouncer$LOG_TAG.log
EOF
  if [[ $TLS_NOW == on ]]; then
    cat >>"$dir/pgbouncer.ini" <<EOF
client_tls_sslmode = require
client_tls_cert_file = $TLS_DIR/pooler.crt
client_tls_key_file = $TLS_DIR/pooler.key
server_tls_sslmode = require
EOF
  fi
  # Named prepared statements in transaction mode need PgBouncer 1.21+
  # (Debian 12 ships 1.18: `-M prepared` fails there with "prepared statement
  # ... already exists"); 1.24 made 200 the default.
  if [[ $(printf '%s\n' "1.21" "$PGB_VERSION" | sort -V | head -n 1) == 1.21 ]]; then
    echo "max_prepared_statements = 200" >>"$dir/pgbouncer.ini"
  fi
  if [[ $EUID == 0 ]]; then chown -R nobody: "$dir"; fi
  : >"$WORK/pgbouncer$LOG_TAG.log"
  if [[ $EUID == 0 ]]; then chown nobody: "$WORK/pgbouncer$LOG_TAG.log"; fi
  "${AS_POOLER[@]}" "${AS_SVC[@]}" "$PGBOUNCER" "$dir/pgbouncer.ini" >"$WORK/pgbouncer$LOG_TAG.stderr.log" 2>&1 &
  PGB_PID=$!
  wait_login "$PGB_PORT" pgbouncer "$PGB_PID" "$WORK/pgbouncer$LOG_TAG.stderr.log" || return 1
  log "pgbouncer pid $PGB_PID on 127.0.0.1:$PGB_PORT (PgBouncer $PGB_VERSION, tls=$TLS_NOW)"
}

start_pgdyno() {
  DYN_PORT=$(free_port)
  local -a extra=() tls=()
  read -ra extra <<<"$PGDYNO_EXTRA_ARGS"
  if [[ $TLS_NOW == on ]]; then
    tls=(--client-tls-sslmode require --client-tls-cert-file "$TLS_DIR/pooler.crt"
      --client-tls-key-file "$TLS_DIR/pooler.key" --server-tls-sslmode require)
  elif ((TLS_ANY)); then
    # pgdyno's server_tls_sslmode defaults to prefer (PgBouncer's to disable),
    # and this PostgreSQL has ssl=on
    tls=(--server-tls-sslmode disable)
  fi
  # pgdyno reads every PGDYNO_* env var as a setting and rejects unknown
  # ones, so this script's own knobs must not reach it.
  "${AS_POOLER[@]}" env -u PGDYNO_BIN -u PGDYNO_EXTRA_ARGS "$PGDYNO_BIN" --listen "127.0.0.1:$DYN_PORT" \
    --upstream "postgres://$DBUSER:$PGPASS@127.0.0.1:$PG_PORT/$DB" \
    --pool-mode transaction --pool-size "$CUR_POOL" --max-client-conn "$CUR_MAX_CLIENT_CONN" \
    "${tls[@]}" "${extra[@]}" >"$WORK/pgdyno$LOG_TAG.log" 2>&1 &
  DYN_PID=$!
  wait_login "$DYN_PORT" pgdyno "$DYN_PID" "$WORK/pgdyno$LOG_TAG.log" || return 1
  log "pgdyno pid $DYN_PID on 127.0.0.1:$DYN_PORT ($PGDYNO_BIN, tls=$TLS_NOW)"
}

# The tokio floor relay: one PostgreSQL connection per client, no login of
# its own (the client logs in to PostgreSQL through it).
start_floor() {
  FLOOR_PORT=$(free_port)
  "${AS_POOLER[@]}" "$FLOOR_BIN" "127.0.0.1:$FLOOR_PORT" "127.0.0.1:$PG_PORT" >"$WORK/floor$LOG_TAG.log" 2>&1 &
  FLOOR_PID=$!
  wait_login "$FLOOR_PORT" floor "$FLOOR_PID" "$WORK/floor$LOG_TAG.log" || return 1
  log "floor pid $FLOOR_PID on 127.0.0.1:$FLOOR_PORT ($FLOOR_BIN)"
}

# Whether the floor relays like a pooler in the current scenario: every
# client on a backend of its own (no more clients than the pool), plain TCP
# (it cannot terminate TLS), and no login of its own to compare (connect).
floor_applies() { ((S_CLIENTS <= S_POOL && !S_CONNECT)) && [[ $TLS_NOW == off ]]; }

# ---------------------------------------------------------------- measuring

# Measures TARGET in the current scenario (S_*) against PORT (the pooler is
# POOLER_PID, "" for direct) with the current TLS setting: a warm-up, then up
# to 1 + NOISE_RETRIES measured runs, stopping at the first that other
# processes disturbed by at most NOISE_MAX percent of the CPUs; the least
# disturbed one goes into $ROWS with the pooler's peak RSS.
measure() {
  local rep=$1 target=$2 port=$3 pooler_pid=$4
  local out attempt best="" best_pml="" hwm=NA
  local label=$S_NAME/$target${TLS_SUFFIX/-//}
  out=$WORK/pgbench-$S_NAME-$target$TLS_SUFFIX$( ((REPEAT == 1)) || echo "-r$rep").out

  rm -f "$WORK/warmup.out"
  if ((WARMUP > 0)); then
    run_pgbench "$port" "$((WARMUP + $(connect_slack)))" "$WORK/warmup.out" || true
  fi
  SLACK=$(connect_slack "$WORK/warmup.out")
  for ((attempt = 1; attempt <= NOISE_RETRIES + 1; attempt++)); do
    pg_prepare_run
    if ((IDLE_WAIT > 0)); then wait_idle; fi
    pgbench_args "$DURATION"
    log "$label: pgbench ${P_ARGS[*]}$( ((SLACK)) && echo " (+${SLACK}s for the logins)")$( ((attempt == 1)) || echo " (attempt $attempt)")"
    # not in $(...): a subshell would hide pgbench's PID from cleanup
    measure_once "$target" "$port" "$pooler_pid" "$WORK/pgbench.out"
    if [[ -z $best ]] || ((R_OTHER_PML < best_pml)); then
      best=$R_ROW best_pml=$R_OTHER_PML
      mv "$WORK/pgbench.out" "$out"
    fi
    [[ $R_STATUS == ok ]] || break
    ((R_OTHER_PML > NOISE_MAX * 10)) || break
    if ((attempt <= NOISE_RETRIES)); then
      log "$label: disturbed ($((R_OTHER_PML / 10)).$((R_OTHER_PML % 10))% of the CPUs went to other processes: $R_OTHERS); measuring again"
    fi
  done
  if [[ -n $pooler_pid ]]; then hwm=$(status_kb "$pooler_pid" VmHWM); fi
  printf '%s\t%s\t%s\t%s\t%s\n' "$rep" "$S_NAME" "$TLS_NOW" "$best" \
    "$((attempt > NOISE_RETRIES + 1 ? NOISE_RETRIES + 1 : attempt))	$hwm" >>"$ROWS"
}

# One measured pgbench run. Sets R_ROW (the columns from target to status and
# the other processes, tab-separated, as $ROWS has them), R_STATUS,
# R_OTHER_PML (busy CPU outside pgbench, PostgreSQL and the pooler, in tenths
# of a percent of all CPUs) and R_OTHERS; leaves pgbench's output in OUT.
measure_once() {
  local target=$1 port=$2 pooler_pid=$3 out=$4 rc=0 status=ok
  local b0 st0 w0 w1 pooler_ticks pooler_sys pg_ticks others tls_status bench0
  local tps lat failed txns conn p99 samples wall busy

  # The CPU figures start once pgbench's clients are logged in (with -C,
  # logging in is what is measured): pgbench's tps leaves the initial
  # connection time out too.
  bench0=0
  if ((S_CONNECT)); then
    pg_quiesce
    proc_snapshot >"$WORK/snap0"
    sys_ticks
    b0=$SYS_BUSY st0=$SYS_STEAL w0=${EPOCHREALTIME/./}
    start_pgbench "$port" "$DURATION" "$out" "$WORK/txlog"
  else
    start_pgbench "$port" "$((DURATION + SLACK))" "$out" "$WORK/txlog"
    wait_connected
    bench0=$(pid_ticks "$BENCH_PID" 2>/dev/null || echo 0)
    proc_snapshot >"$WORK/snap0"
    sys_ticks
    b0=$SYS_BUSY st0=$SYS_STEAL w0=${EPOCHREALTIME/./}
  fi
  finish_pgbench || rc=$?
  BENCH_TICKS=$((BENCH_TICKS - bench0))
  pg_quiesce
  proc_snapshot >"$WORK/snap1"
  w1=${EPOCHREALTIME/./}
  sys_ticks
  if [[ -n $pooler_pid ]] && ! alive "$pooler_pid"; then status=pooler-died; fi
  # pgbench's sslmode settles the client side; the backends' side is checked
  if [[ -n $pooler_pid && $status == ok && $TLS_ANY == 1 ]]; then
    tls_status=$(backend_tls_status)
    status=${tls_status:-ok}
  fi
  read -r pooler_ticks pooler_sys pg_ticks others < <(cpu_deltas "$WORK/snap0" "$WORK/snap1" "$pooler_pid")
  if ((rc != 0)); then
    if [[ $status == ok ]]; then status=pgbench-exit-$rc; else status+=",pgbench-exit-$rc"; fi
  fi
  if [[ $status != ok ]]; then
    log "$S_NAME/$target${TLS_SUFFIX/-//}: $status; pgbench said:"
    grep -m 5 -iE 'error|abort|fatal' "$out" >&2 || tail -n 5 "$out" >&2
  fi
  read -r tps lat failed txns conn < <(awk '
      /^number of transactions actually processed:/ { split($6, a, "/"); txns = a[1] }
      /^number of failed transactions:/ { failed = $5 }
      /^latency average =/ { lat = $4 }
      /^average connection time =/ { conn = $5 }
      /^tps =/ { tps = $3 }
      END {
        printf "%s %s %s %s %s\n", (tps == "" ? "NA" : tps), (lat == "" ? "NA" : lat), (failed == "" ? "NA" : failed),
          (txns == "" ? 0 : txns), (conn == "" ? "NA" : conn)
      }' "$out")
  read -r p99 samples < <(txlog_p99 "$WORK/txlog")
  if [[ $status == ok && $txns == 0 ]]; then
    status=no-transactions
    log "$S_NAME/$target${TLS_SUFFIX/-//}: pgbench ran no transaction"
  fi
  # select-rate: a run that did not keep up was not at the fixed load
  if [[ $status == ok ]] && ((S_RATE)) && awk -v t="$tps" -v r="$S_RATE" 'BEGIN { exit !(t == "NA" || t < 0.95 * r) }'; then
    status=behind-rate
    log "$S_NAME/$target${TLS_SUFFIX/-//}: $tps tps, short of the $S_RATE asked for (lower RATE)"
  fi
  wall=$((w1 - w0)) busy=$((SYS_BUSY - b0))
  R_OTHER_PML=$(awk -v hz="$CLK_TCK" -v ncpu="$NCPU" -v w="$wall" -v b="$busy" -v p="$pooler_ticks" -v g="$pg_ticks" -v c="$BENCH_TICKS" \
    'BEGIN { w /= 1e6; x = (w > 0 ? 1000 * (b - (p > 0 ? p : 0) - g - c) / (hz * w * ncpu) : 0); printf "%d\n", (x > 0 ? x : 0) }')
  R_STATUS=$status R_OTHERS=$others
  # target mode clients jobs pool connect tps latency_ms p99_ms failed
  # transactions conn_ms samples pooler_ticks pooler_sys_ticks has_pooler
  # postgres_ticks pgbench_ticks busy_ticks steal_ticks wall_us other_pml
  # status top_other_processes
  R_ROW=$(printf '%s\t' "$target" "$S_MODE" "$S_CLIENTS" "$S_JOBS" "$([[ $target == direct ]] && echo - || echo "$CUR_POOL")" \
    "$S_CONNECT" "$tps" "$lat" "$p99" "$failed" "$txns" "$conn" "$samples" "$pooler_ticks" "$pooler_sys" \
    "$([[ -n $pooler_pid ]] && echo 1 || echo 0)" "$pg_ticks" "$BENCH_TICKS" "$busy" "$((SYS_STEAL - st0))" "$wall" \
    "$R_OTHER_PML" "$status")$others
}

# Starts TARGET's pooler (none for direct) with CUR_POOL, CUR_MAX_CLIENT_CONN
# and the current TLS setting; sets T_PORT and T_PID ("" for direct). Returns
# 1, with the pooler stopped, if it did not start.
start_target() {
  T_PID=""
  case $1 in
    direct) T_PORT=$PG_PORT ;;
    pgbouncer) start_pgbouncer && T_PORT=$PGB_PORT T_PID=$PGB_PID ;;
    pgdyno) start_pgdyno && T_PORT=$DYN_PORT T_PID=$DYN_PID ;;
    floor) start_floor && T_PORT=$FLOOR_PORT T_PID=$FLOOR_PID ;;
  esac && return 0
  stop_target "$1"
  return 1
}

stop_target() {
  case $1 in
    pgbouncer) stop_pid "$PGB_PID" pgbouncer TERM; PGB_PID="" ;;
    pgdyno) stop_pid "$DYN_PID" pgdyno INT; DYN_PID="" ;;
    floor) stop_pid "$FLOOR_PID" floor TERM; FLOOR_PID="" ;;
  esac
}

# Runs the current scenario (S_*, TLS set) against TARGET in repetition REP.
run_target() {
  local rep=$1 target=$2
  if [[ $target == floor ]] && ! floor_applies; then return; fi
  CUR_POOL=$S_POOL CUR_MAX_CLIENT_CONN=$MAX_CLIENT_CONN
  LOG_TAG=-$S_NAME$TLS_SUFFIX$( ((REPEAT == 1)) || echo "-r$rep")
  if ! start_target "$target"; then
    STARTED_OK=0
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\tNA\tNA\tNA\tNA\t0\tNA\t0\t-1\t-1\t1\t0\t0\t0\t0\t0\t0\t%s\t-\t0\tNA\n' \
      "$rep" "$S_NAME" "$TLS_NOW" "$target" "$S_MODE" "$S_CLIENTS" "$S_JOBS" "$S_POOL" "$S_CONNECT" \
      "$target-failed-to-start" >>"$ROWS"
    return
  fi
  measure "$rep" "$target" "$T_PORT" "$T_PID"
  if [[ $TLS_ANY == 1 && $target != floor && " $TLS_NOTED " != *" $target/$TLS_NOW "* ]] && { [[ -z $T_PID ]] || alive "$T_PID"; }; then
    tls_note "$target" "$T_PORT" "$T_PID" >>"$TLS_NOTES"
    TLS_NOTED+=" $target/$TLS_NOW"
  fi
  stop_target "$target"
}

# The idle-client memory of TARGET (a pooler) in repetition REP: its RSS after
# one login, then with IDLE_CLIENTS more clients logged in and idle (opened by
# benches/idle_clients.py, which holds them until its stdin closes), and the
# pooler's CPU per login meanwhile.
measure_idle() {
  local rep=$1 target=$2 rss0 rss1 hwm fds0 fds1 t0 t1 i ready="" ctl status=ok ok=0 failed=0 secs=NA fd
  set_tls off
  CUR_POOL=$POOL CUR_MAX_CLIENT_CONN=$((IDLE_CLIENTS + 100))
  LOG_TAG=-idle$( ((REPEAT == 1)) || echo "-r$rep")
  if ! start_target "$target"; then
    STARTED_OK=0
    printf '%s\t%s\t%s\t0\t0\tNA\tNA\tNA\tNA\tNA\tNA\t-1\t%s\n' "$rep" "$target" "$IDLE_CLIENTS" "$target-failed-to-start" >>"$IDLE_ROWS"
    return
  fi
  sleep 1
  rss0=$(status_kb "$T_PID" VmRSS) fds0=$(count_fds "$T_PID")
  t0=$(pid_ticks "$T_PID")
  log "idle/$target: RSS ${rss0} kB; opening $IDLE_CLIENTS idle clients"
  ctl=$WORK/idle-ctl
  rm -f "$ctl"
  mkfifo "$ctl"
  PGPASSWORD=$PGPASS "$PYTHON" "$REPO/benches/idle_clients.py" --port "$T_PORT" --user "$DBUSER" --db "$DB" \
    -n "$IDLE_CLIENTS" <"$ctl" >"$WORK/idle-clients-$target.out" 2>"$WORK/idle-clients-$target.log" &
  IDLE_PID=$!
  exec {fd}>"$ctl" # the clients hold on until this closes
  for ((i = 0; i < 3000; i++)); do
    ready=$(grep -m 1 '^ready ' "$WORK/idle-clients-$target.out" || true)
    if [[ -n $ready ]] || ! alive "$IDLE_PID" || ! alive "$T_PID"; then break; fi
    sleep 0.2
  done
  t1=$(pid_ticks "$T_PID" 2>/dev/null || echo -1)
  if [[ -n $ready ]]; then
    ok=$(sed -n 's/.* ok=\([0-9]*\).*/\1/p' <<<"$ready") failed=$(sed -n 's/.* failed=\([0-9]*\).*/\1/p' <<<"$ready")
    secs=$(sed -n 's/.* seconds=\([0-9.]*\).*/\1/p' <<<"$ready")
    sleep 2 # let the last logins settle
    rss1=$(status_kb "$T_PID" VmRSS) hwm=$(status_kb "$T_PID" VmHWM)
    fds1=$(count_fds "$T_PID")
    log "idle/$target: $ok clients logged in ($failed failed) in ${secs}s; RSS ${rss1} kB, peak ${hwm} kB, $((fds1 - fds0)) more descriptors"
    ((failed == 0)) || status=logins-failed
  else
    status=no-ready
    rss1=NA hwm=NA fds1=NA
    log "idle/$target: the idle clients did not all log in; last lines of their log:"
    tail -n 5 "$WORK/idle-clients-$target.log" >&2 || true
  fi
  alive "$T_PID" || status=pooler-died
  exec {fd}>&-
  for ((i = 0; i < 300; i++)); do
    alive "$IDLE_PID" || break
    sleep 0.1
  done
  stop_pid "$IDLE_PID" idle_clients TERM
  IDLE_PID=""
  rm -f "$ctl"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$target" "$IDLE_CLIENTS" "$ok" "$failed" "$secs" \
    "$rss0" "$rss1" "$hwm" "$fds0" "$fds1" "$((t1 < 0 ? -1 : t1 - t0))" "$status" >>"$IDLE_ROWS"
  stop_target "$target"
}

# ---------------------------------------------------------------- main

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$SECONDS
log "scenarios: ${UNITS[*]}$( ((RUN_IDLE)) && echo " idle($IDLE_CLIENTS clients)"); targets: $TARGETS; repeat $REPEAT; ${DURATION}s (+${WARMUP}s warm-up); scale $SCALE"
: >"$TLS_NOTES"
TLS_NOTED=""
read -ra TARGET_LIST <<<"$TARGETS"
NT=${#TARGET_LIST[@]}
for ((rep = 1; rep <= REPEAT; rep++)); do
  # the targets' order rotates from one repetition to the next
  order=()
  for ((k = 0; k < NT; k++)); do order+=("${TARGET_LIST[(k + rep - 1) % NT]}"); done
  ((REPEAT == 1)) || log "repetition $rep of $REPEAT (order: ${order[*]})"
  for u in "${UNITS[@]}"; do
    scenario_setup "${u%%:*}"
    set_tls "${u#*:}"
    for t in "${order[@]}"; do run_target "$rep" "$t"; done
  done
  if ((RUN_IDLE)); then
    for t in "${order[@]}"; do
      [[ $t == direct || $t == floor ]] || measure_idle "$rep" "$t"
    done
  fi
done
log "measured in $((SECONDS - T_START))s"

# ---------------------------------------------------------------- report

mkdir -p "$RESULTS_DIR"
cp "$ROWS" "$RESULTS_DIR/load-$STAMP.runs.tsv"
cp "$IDLE_ROWS" "$RESULTS_DIR/load-$STAMP.idle.tsv"

GIT_REV=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo none)
if [[ -n $(git -C "$REPO" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]]; then GIT_REV+="+dirty"; fi
if ! has_target pgdyno; then
  PGDYNO_DESC="not run (repository at git $GIT_REV)"
elif ((PGDYNO_BUILT)); then
  PGDYNO_DESC="$PGDYNO_BIN built from the work tree at git $GIT_REV"
  if [[ $PGO == 1 ]]; then PGDYNO_DESC+=" (profile-guided: scripts/pgo-build.sh)"; fi
else
  PGDYNO_DESC="$PGDYNO_BIN (given with PGDYNO_BIN; the repository is at git $GIT_REV)"
fi
[[ -z $PGDYNO_EXTRA_ARGS ]] || PGDYNO_DESC+=", extra arguments: $PGDYNO_EXTRA_ARGS"
META=$WORK/meta.env
{
  printf 'date=%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
  printf 'command=%s\n' "$COMMAND"
  printf 'quick=%s\n' "$QUICK"
  printf 'hz=%s\nncpu=%s\n' "$CLK_TCK" "$NCPU"
  printf 'cpu_model=%s\n' "$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
  printf 'kernel=%s\n' "$(uname -sr)"
  printf 'memory=%s\n' "$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
  printf 'postgres=%s\n' "$("$POSTGRES" --version)"
  printf 'pgbouncer=%s\n' "$PGB_VERSION"
  printf 'pgbench=%s\n' "$("$PGBENCH" --version)"
  if [[ $OPENSSL == none ]]; then echo openssl=none; else printf 'openssl=%s\n' "$("$OPENSSL" version | cut -d' ' -f1-2)"; fi
  printf 'pgdyno=%s\n' "$PGDYNO_DESC"
  printf 'duration=%s\nwarmup=%s\nrepeat=%s\nscale=%s\nnoise_max=%s\n' "$DURATION" "$WARMUP" "$REPEAT" "$SCALE" "$NOISE_MAX"
  printf 'load_before=%s\n' "$LOAD_BEFORE"
  printf 'idle_clients=%s\n' "$IDLE_CLIENTS"
  printf 'pg_max_connections=%s\n' "$PG_MAX_CONNECTIONS"
  printf 'measured_seconds=%s\n' "$((SECONDS - T_START))"
} >"$META"
report_args=(--runs "$ROWS" --idle "$IDLE_ROWS" --meta "$META" --tls-notes "$TLS_NOTES"
  --csv "$RESULTS_DIR/load-$STAMP.csv" --md "$RESULTS_DIR/load-$STAMP.md" --svg "$RESULTS_DIR/load-$STAMP.svg")
if ((WRITE_BENCHMARKS)); then
  report_args+=(--benchmarks "$REPO/BENCHMARKS.md" --benchmarks-svg "$REPO/benches/load.svg")
fi
echo
"$PYTHON" "$REPO/benches/load_report.py" "${report_args[@]}" || die "benches/load_report.py failed; the raw runs are in $RESULTS_DIR/load-$STAMP.runs.tsv"
echo
logs=$(save_logs)
echo "results: $RESULTS_DIR/load-$STAMP.md"
echo "         $RESULTS_DIR/load-$STAMP.csv (medians), load-$STAMP.runs.tsv (every run), load-$STAMP.svg"
((WRITE_BENCHMARKS == 0)) || echo "         $REPO/BENCHMARKS.md, $REPO/benches/load.svg"
echo "logs:    $logs"
((STARTED_OK == 1)) || exit 1
