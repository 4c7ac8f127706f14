#!/usr/bin/env bash
# Load benchmark: a direct connection to PostgreSQL vs PgBouncer vs pgdyno, with pgbench.
#
# One run starts a throwaway PostgreSQL (initdb into a temp dir, fsync=off,
# scram-sha-256 on 127.0.0.1), then, for each target in TARGETS (in that
# order), starts the pooler, runs `pgbench -S` (or tpcb-like) for each query
# mode in MODES after a short warm-up, and stops the pooler again. Besides
# pgbench's tps, latency and failures it reads CPU time from /proc:
#
#   pooler_us    the pooler process's utime+stime (all threads) per transaction:
#                the figure to compare (see shared/PERFORMANCE.md)
#   cpu_vs_pgb   pooler_us relative to PgBouncer's in the same mode and TLS
#                setting: the machine-independent form of it
#   postgres_us  postmaster + all backends, per transaction
#   pgbench_us   the pgbench client, per transaction
#   other_cpu%   busy CPU on the machine that is none of the above, as a share
#                of all cores over the run: anything above a few percent means
#                something else (a build, a test run) disturbed the figures
#
# TLS=1 measures the same with TLS on every hop (sslmode=require): PostgreSQL
# gets ssl=on and a server certificate, the poolers a certificate for their
# clients and server_tls_sslmode=require toward PostgreSQL, pgbench connects
# with sslmode=require. Certificates (ECDSA P-256, a throwaway CA) are made
# at run time with the openssl CLI. pgbench keeps its connections (no -C), so
# this is the per-transaction cost of encryption, not of handshakes. TLS=both
# runs every target plain and then with TLS against the same PostgreSQL. Each
# row has tls=off|on, and the ratios compare rows of the same TLS setting.
#
# Usage: benches/load.sh [--quick] [--help]
# Env:   DURATION CLIENTS JOBS POOL SCALE MODES TARGETS SCRIPT TLS WARMUP
#        IDLE_WAIT NOISE_MAX NOISE_RETRIES PGDYNO_BIN PGDYNO_EXTRA_ARGS
#        RESULTS_DIR KEEP_TMP (see --help)
#
# Traffic goes only to 127.0.0.1. Everything started here is stopped by PID on exit.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: benches/load.sh [--quick]

Compares a direct connection to PostgreSQL, PgBouncer and pgdyno with pgbench
(transaction pooling, pool of POOL backends, CLIENTS clients).

  --quick      smoke check: DURATION=3, WARMUP=1, IDLE_WAIT=0 and
               NOISE_RETRIES=0 unless set
  -h, --help   this text

Environment (defaults in brackets):
  DURATION           seconds per measured pgbench run [15]
  WARMUP             seconds of unmeasured pgbench before each run [3]
  CLIENTS            pgbench clients (-c) [16]
  JOBS               pgbench threads (-j) [2]
  POOL               pool size of both poolers [16]
  SCALE              pgbench -i scale factor [10]
  MODES              pgbench query modes (-M): simple extended prepared ["simple extended"]
  TARGETS            any of: direct pgbouncer pgdyno ["direct pgbouncer pgdyno"]
  SCRIPT             select (pgbench -S) or tpcb (tpcb-like, 7 statements) [select]
  TLS                0: plain TCP; 1: TLS (sslmode=require) from pgbench to the
                     pooler and from the pooler to PostgreSQL (direct: pgbench
                     to PostgreSQL), certificates made with openssl at run
                     time; both: every target plain, then every target with
                     TLS. Ratios compare runs of the same TLS setting. [0]
  PGDYNO_BIN         use this pgdyno binary instead of `cargo build --release`
  PGDYNO_EXTRA_ARGS  extra arguments appended to pgdyno's command line
  IDLE_WAIT          seconds to wait, before each run, for other load on the
                     machine to stop (0: don't wait) [60]
  NOISE_MAX          a run in which other processes used more than this percent
                     of the CPUs counts as disturbed [5]
  NOISE_RETRIES      measure a disturbed run again up to this many times and
                     keep the least disturbed one [2]
  RESULTS_DIR        where the .md/.csv results and logs go [benches/results]
  KEEP_TMP           1 keeps the temporary data directory [0]
EOF
}

QUICK=0
for arg in "$@"; do
  case $arg in
    --quick) QUICK=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "load.sh: unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

DURATION=${DURATION:-15}
WARMUP=${WARMUP:-3}
if [[ $QUICK == 1 ]]; then
  DURATION=3
  WARMUP=1
fi
CLIENTS=${CLIENTS:-16}
JOBS=${JOBS:-2}
POOL=${POOL:-16}
SCALE=${SCALE:-10}
MODES=${MODES:-simple extended}
TARGETS=${TARGETS:-direct pgbouncer pgdyno}
SCRIPT=${SCRIPT:-select}
TLS=${TLS:-0}
PGDYNO_BIN=${PGDYNO_BIN:-}
PGDYNO_EXTRA_ARGS=${PGDYNO_EXTRA_ARGS:-}
KEEP_TMP=${KEEP_TMP:-0}
if [[ $QUICK == 1 ]]; then
  IDLE_WAIT=${IDLE_WAIT:-0} NOISE_RETRIES=${NOISE_RETRIES:-0}
else
  IDLE_WAIT=${IDLE_WAIT:-60} NOISE_RETRIES=${NOISE_RETRIES:-2}
fi
NOISE_MAX=${NOISE_MAX:-5}
MAX_CLIENT_CONN=1000
DB=bench
DBUSER=bench

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS_DIR=${RESULTS_DIR:-$REPO/benches/results}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- validation

for v in DURATION CLIENTS JOBS POOL SCALE; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
for v in WARMUP IDLE_WAIT NOISE_RETRIES NOISE_MAX; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
done
((JOBS <= CLIENTS)) || JOBS=$CLIENTS
for m in $MODES; do
  case $m in simple | extended | prepared) ;; *) die "unknown mode '$m' in MODES" ;; esac
done
for t in $TARGETS; do
  case $t in direct | pgbouncer | pgdyno) ;; *) die "unknown target '$t' in TARGETS" ;; esac
done
case $SCRIPT in
  select) SCRIPT_ARGS=(-S) ;;
  tpcb) SCRIPT_ARGS=() ;;
  *) die "SCRIPT must be 'select' or 'tpcb', got '$SCRIPT'" ;;
esac
case $TLS in
  0) TLS_RUNS=off ;;
  1) TLS_RUNS=on ;;
  both) TLS_RUNS="off on" ;;
  *) die "TLS must be 0, 1 or both, got '$TLS'" ;;
esac
has_target() { [[ " $TARGETS " == *" $1 "* ]]; }

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
if [[ $TLS_RUNS == *on* ]]; then
  OPENSSL=$(command -v openssl) || die "TLS=$TLS needs the openssl command (apt-get install openssl)"
fi
PGBOUNCER=/usr/sbin/pgbouncer
PGB_VERSION=none
if has_target pgbouncer; then
  [[ -x $PGBOUNCER ]] || die "$PGBOUNCER not found (apt-get install pgbouncer)"
  PGB_VERSION=$("$PGBOUNCER" --version | awk 'NR == 1 { print $2 }')
fi
if has_target direct && ((CLIENTS > 190)); then
  die "CLIENTS=$CLIENTS: the direct target needs a backend per client and PostgreSQL here has max_connections=200"
fi
CLK_TCK=$(getconf CLK_TCK)
NCPU=$(nproc)

# Services run as `nobody` when we are root (PostgreSQL and PgBouncer refuse root).
AS_SVC=()
if [[ $EUID == 0 ]]; then
  AS_SVC=(setpriv --reuid="$(id -u nobody)" --regid="$(id -g nobody)" --clear-groups --)
fi

# pgbouncer wants a file descriptor per client and per backend.
if [[ $(ulimit -n) != unlimited ]] && (($(ulimit -n) < 4096)); then
  ulimit -n 4096 2>/dev/null || log "warning: could not raise the open files limit to 4096"
fi

# ---------------------------------------------------------------- state and cleanup

STAMP=$(date +%Y%m%d-%H%M%S)
WORK=$(mktemp -d /tmp/pgdyno-bench.XXXXXX)
chmod 755 "$WORK"
cd "$WORK" # services started as nobody need a readable working directory
PG_PID="" PGB_PID="" DYN_PID="" BENCH_PID=""
PGDATA=$WORK/pgdata
SOCKDIR=$WORK/sock
TLS_DIR=$WORK/tls
TLS_NOTES=$WORK/tls-notes
# The TLS setting of the runs under way (set_tls): on|off, the sslmode pgbench
# and psql use, and a suffix for file names and log labels.
TLS_NOW=off SSLMODE=disable SSLROOTCERT="" TLS_SUFFIX=""
ROWS=$WORK/rows.tsv
: >"$ROWS"
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
  stop_pid "$DYN_PID" pgdyno TERM
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

# Runs pgbench against PORT with its output in OUT, and sets BENCH_TICKS to
# its CPU time (user+sys, all threads): the difference in this shell's
# children times, so pgbench must be the only child reaped in between.
# Waits in the background so that a signal to this script is handled at once.
# Returns pgbench's status.
run_pgbench() {
  local port=$1 mode=$2 secs=$3 out=$4 rc=0
  times >"$WORK/times0"
  PGPASSWORD=$PGPASS PGSSLMODE=$SSLMODE PGSSLROOTCERT=$SSLROOTCERT "$PGBENCH" -h 127.0.0.1 -p "$port" \
    -U "$DBUSER" -n "${SCRIPT_ARGS[@]}" -c "$CLIENTS" -j "$JOBS" -T "$secs" -M "$mode" "$DB" >"$out" 2>&1 &
  BENCH_PID=$!
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

# ---------------------------------------------------------------- pgdyno build

PGDYNO_BUILT=0
if has_target pgdyno; then
  if [[ -z $PGDYNO_BIN ]]; then
    PGDYNO_BUILT=1
    log "building pgdyno (cargo build --release)"
    (cd "$REPO" && cargo build --release >&2) ||
      die "cargo build --release failed; run without pgdyno (TARGETS=\"direct pgbouncer\") or set PGDYNO_BIN"
    PGDYNO_BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/pgdyno
  fi
  [[ -x $PGDYNO_BIN ]] || die "pgdyno binary not found: $PGDYNO_BIN"
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
max_connections = 200
fsync = off
full_page_writes = off
shared_buffers = 256MB
password_encryption = 'scram-sha-256'
EOF
if [[ $TLS_RUNS == *on* ]]; then
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
default_pool_size = $POOL
max_client_conn = $MAX_CLIENT_CONN
ignore_startup_parameters = extra_float_digits
logfile = $WORK/pgbouncer$TLS_SUFFIX.log
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
  : >"$WORK/pgbouncer$TLS_SUFFIX.log"
  if [[ $EUID == 0 ]]; then chown nobody: "$WORK/pgbouncer$TLS_SUFFIX.log"; fi
  "${AS_SVC[@]}" "$PGBOUNCER" "$dir/pgbouncer.ini" >"$WORK/pgbouncer$TLS_SUFFIX.stderr.log" 2>&1 &
  PGB_PID=$!
  wait_login "$PGB_PORT" pgbouncer "$PGB_PID" "$WORK/pgbouncer$TLS_SUFFIX.stderr.log" || return 1
  log "pgbouncer pid $PGB_PID on 127.0.0.1:$PGB_PORT (PgBouncer $PGB_VERSION, tls=$TLS_NOW)"
}

start_pgdyno() {
  DYN_PORT=$(free_port)
  local -a extra=() tls=()
  read -ra extra <<<"$PGDYNO_EXTRA_ARGS"
  if [[ $TLS_NOW == on ]]; then
    tls=(--client-tls-sslmode require --client-tls-cert-file "$TLS_DIR/pooler.crt"
      --client-tls-key-file "$TLS_DIR/pooler.key" --server-tls-sslmode require)
  elif [[ $TLS_RUNS == *on* ]]; then
    # pgdyno's server_tls_sslmode defaults to prefer (PgBouncer's to disable),
    # and this PostgreSQL has ssl=on
    tls=(--server-tls-sslmode disable)
  fi
  # pgdyno reads every PGDYNO_* env var as a setting and rejects unknown
  # ones, so this script's own knobs must not reach it.
  env -u PGDYNO_BIN -u PGDYNO_EXTRA_ARGS "$PGDYNO_BIN" --listen "127.0.0.1:$DYN_PORT" \
    --upstream "postgres://$DBUSER:$PGPASS@127.0.0.1:$PG_PORT/$DB" \
    --pool-mode transaction --pool-size "$POOL" --max-client-conn "$MAX_CLIENT_CONN" \
    "${tls[@]}" "${extra[@]}" >"$WORK/pgdyno$TLS_SUFFIX.log" 2>&1 &
  DYN_PID=$!
  wait_login "$DYN_PORT" pgdyno "$DYN_PID" "$WORK/pgdyno$TLS_SUFFIX.log" || return 1
  log "pgdyno pid $DYN_PID on 127.0.0.1:$DYN_PORT ($PGDYNO_BIN, tls=$TLS_NOW)"
}

# ---------------------------------------------------------------- measuring

# Measures TARGET in MODE against PORT (the pooler is POOLER_PID, "" for
# direct) with the current TLS setting: a warm-up, then up to 1 +
# NOISE_RETRIES measured runs, stopping at the first that other processes
# disturbed by at most NOISE_MAX percent of the CPUs; the least disturbed one
# goes into $ROWS.
measure() {
  local target=$1 mode=$2 port=$3 pooler_pid=$4
  local out=$WORK/pgbench-$target-$mode$TLS_SUFFIX.out attempt best="" best_pct="" pct row
  local label=$target/$mode${TLS_SUFFIX/-//}

  if ((WARMUP > 0)); then
    run_pgbench "$port" "$mode" "$WARMUP" "$WORK/warmup.out" || true
  fi
  for ((attempt = 1; attempt <= NOISE_RETRIES + 1; attempt++)); do
    pg_prepare_run
    if ((IDLE_WAIT > 0)); then wait_idle; fi
    log "$label: pgbench -c $CLIENTS -j $JOBS -T $DURATION -M $mode ${SCRIPT_ARGS[*]}$( ((attempt == 1)) || echo " (attempt $attempt)")"
    # not in $(...): a subshell would hide pgbench's PID from cleanup
    measure_once "$target" "$mode" "$port" "$pooler_pid" "$WORK/pgbench.out" >"$WORK/row"
    row=$(<"$WORK/row")
    # other CPU, in tenths of a percent: busy - pooler - postgres - pgbench
    pct=$(awk -F'\t' -v hz="$CLK_TCK" -v ncpu="$NCPU" '{
        w = $13 / 1e6; printf "%d\n", (w > 0 ? 1000 * ($11 - $7 - $9 - $10) / (hz * w * ncpu) : 0) }' <<<"$row")
    if [[ -z $best ]] || ((pct < best_pct)); then
      best=$row best_pct=$pct
      mv "$WORK/pgbench.out" "$out"
    fi
    [[ $(cut -f14 <<<"$row") == ok ]] || break
    ((pct > NOISE_MAX * 10)) || break
    if ((attempt <= NOISE_RETRIES)); then
      log "$label: disturbed ($((pct / 10)).$((pct % 10))% of the CPUs went to other processes: $(cut -f15 <<<"$row")); measuring again"
    fi
  done
  printf '%s\t%s\t%s\n' "$best" "$((attempt > NOISE_RETRIES + 1 ? NOISE_RETRIES + 1 : attempt))" "$TLS_NOW" >>"$ROWS"
}

# One measured pgbench run; prints its row (see the awk below) and leaves
# pgbench's output in OUT.
measure_once() {
  local target=$1 mode=$2 port=$3 pooler_pid=$4 out=$5 rc=0 status=ok
  local b0 st0 w0 w1 pooler_ticks pooler_sys pg_ticks others tls_status

  pg_quiesce
  proc_snapshot >"$WORK/snap0"
  sys_ticks
  b0=$SYS_BUSY st0=$SYS_STEAL w0=${EPOCHREALTIME/./}
  run_pgbench "$port" "$mode" "$DURATION" "$out" || rc=$?
  pg_quiesce
  proc_snapshot >"$WORK/snap1"
  w1=${EPOCHREALTIME/./}
  sys_ticks
  if [[ -n $pooler_pid ]] && ! alive "$pooler_pid"; then status=pooler-died; fi
  # pgbench's sslmode settles the client side; the backends' side is checked
  if [[ -n $pooler_pid && $status == ok && $TLS_RUNS == *on* ]]; then
    tls_status=$(backend_tls_status)
    status=${tls_status:-ok}
  fi
  read -r pooler_ticks pooler_sys pg_ticks others < <(cpu_deltas "$WORK/snap0" "$WORK/snap1" "$pooler_pid")
  if ((rc != 0)); then
    if [[ $status == ok ]]; then status=pgbench-exit-$rc; else status+=",pgbench-exit-$rc"; fi
  fi
  if [[ $status != ok ]]; then
    log "$target/$mode${TLS_SUFFIX/-//}: $status; pgbench said:"
    grep -m 5 -iE 'error|abort|fatal' "$out" >&2 || tail -n 5 "$out" >&2
  fi

  # A row: target mode tps latency failed transactions pooler_ticks has_pooler
  # postgres_ticks pgbench_ticks busy_ticks steal_ticks wall_us status others
  # pooler_sys_ticks (measure adds: attempts tls)
  awk -v target="$target" -v mode="$mode" -v pt="$pooler_ticks" -v haspooler="${pooler_pid:+1}" \
    -v gt="$pg_ticks" -v bt="$BENCH_TICKS" -v wall="$((w1 - w0))" -v status="$status" -v others="$others" \
    -v sys="$((SYS_BUSY - b0))\t$((SYS_STEAL - st0))" -v psys="$pooler_sys" '
      /^number of transactions actually processed:/ { split($6, a, "/"); txns = a[1] }
      /^number of failed transactions:/ { failed = $5 }
      /^latency average =/ { lat = $4 }
      /^tps =/ { tps = $3 }
      END {
        if (txns == "") txns = 0
        if (failed == "") failed = "NA"
        if (lat == "") lat = "NA"
        if (tps == "") tps = "NA"
        printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", target, mode, tps, lat, failed, txns,
          pt, (haspooler == "1" ? 1 : 0), gt, bt, sys, wall, status, others, psys
      }' "$out"
}

run_target() {
  local target=$1 port pid="" mode
  case $target in
    direct) port=$PG_PORT ;;
    pgbouncer)
      if ! start_pgbouncer; then
        record_failure pgbouncer "pgbouncer-failed-to-start"
        stop_pid "$PGB_PID" pgbouncer TERM
        PGB_PID=""
        return
      fi
      port=$PGB_PORT pid=$PGB_PID
      ;;
    pgdyno)
      if ! start_pgdyno; then
        record_failure pgdyno "pgdyno-failed-to-start"
        stop_pid "$DYN_PID" pgdyno TERM
        DYN_PID=""
        return
      fi
      port=$DYN_PORT pid=$DYN_PID
      ;;
  esac
  for mode in $MODES; do
    measure "$target" "$mode" "$port" "$pid"
    if [[ -n $pid ]] && ! alive "$pid"; then
      log "$target exited during the run; skipping its remaining modes"
      break
    fi
  done
  if [[ $TLS_RUNS == *on* ]] && { [[ -z $pid ]] || alive "$pid"; }; then
    tls_note "$target" "$port" "$pid" >>"$TLS_NOTES"
  fi
  case $target in
    pgbouncer) stop_pid "$PGB_PID" pgbouncer TERM; PGB_PID="" ;;
    pgdyno) stop_pid "$DYN_PID" pgdyno TERM; DYN_PID="" ;;
  esac
}

record_failure() {
  local mode
  STARTED_OK=0
  for mode in $MODES; do
    printf '%s\t%s\tNA\tNA\tNA\t0\t0\t0\t0\t0\t0\t0\t0\t%s\t-\t0\t0\t%s\n' "$1" "$mode" "$2" "$TLS_NOW" >>"$ROWS"
  done
}

# ---------------------------------------------------------------- main

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "targets: $TARGETS; modes: $MODES; script: $SCRIPT; tls: $TLS_RUNS; clients $CLIENTS, jobs $JOBS, pool $POOL, scale $SCALE, ${DURATION}s (+${WARMUP}s warm-up)"
: >"$TLS_NOTES"
for tls in $TLS_RUNS; do
  set_tls "$tls"
  for t in $TARGETS; do
    run_target "$t"
  done
done

# ---------------------------------------------------------------- report

mkdir -p "$RESULTS_DIR"
CSV=$RESULTS_DIR/load-$STAMP.csv
MD=$RESULTS_DIR/load-$STAMP.md

# Derived figures per row; ratios are against the direct / pgbouncer row of
# the same mode and TLS setting.
awk -F'\t' -v OFS=',' -v hz="$CLK_TCK" -v ncpu="$NCPU" '
  function us(ticks) { return (txns > 0 && ticks >= 0) ? sprintf("%.1f", ticks / hz * 1e6 / txns) : "NA" }
  function pct(ticks) { return (wall > 0.01) ? sprintf("%.1f", (ticks < 0 ? 0 : 100 * ticks / (hz * wall * ncpu))) : "NA" }
  function ratio(a, b) { return (a != "NA" && b != "" && b > 0) ? sprintf("%.2f", a / b) : "-" }
  {
    row[NR] = $0
    if ($14 == "ok") base[$1, $2, $18] = $3
    if ($14 == "ok" && $1 == "pgbouncer" && $6 > 0 && $7 >= 0) pgb_cpu[$2, $18] = $7 / $6
  }
  END {
    print "target", "mode", "tls", "tps", "latency_ms", "failed", "transactions", "pooler_us_per_txn",
      "postgres_us_per_txn", "pgbench_us_per_txn", "total_us_per_txn", "other_cpu_pct",
      "steal_pct", "tps_vs_direct", "tps_vs_pgbouncer", "status", "top_other_processes", "pooler_sys_share_pct",
      "pooler_cpu_vs_pgbouncer", "attempts"
    for (i = 1; i <= NR; i++) {
      split(row[i], f, "\t")
      txns = f[6]; wall = f[13] / 1e6
      tps = (f[3] == "NA") ? "NA" : sprintf("%.0f", f[3])
      print f[1], f[2], f[18], tps, f[4], f[5], txns, (f[8] == 1 ? us(f[7]) : "-"), us(f[9]), us(f[10]),
        us(f[11]), pct(f[11] - f[7] - f[9] - f[10]), pct(f[12]),
        ratio(f[3], base["direct", f[2], f[18]]), ratio(f[3], base["pgbouncer", f[2], f[18]]), f[14], f[15],
        (f[8] == 1 && f[7] > 0 ? sprintf("%.0f", 100 * f[16] / f[7]) : "-"),
        (f[8] == 1 && f[7] >= 0 && txns > 0 && pgb_cpu[f[2], f[18]] > 0 ? sprintf("%.2f", f[7] / txns / pgb_cpu[f[2], f[18]]) : "-"), f[17]
    }
  }' "$ROWS" >"$CSV"

GIT_REV=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo none)
if [[ -n $(git -C "$REPO" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]]; then GIT_REV+="+dirty"; fi
{
  echo "# pgdyno load benchmark, $(date '+%Y-%m-%d %H:%M:%S %Z')"
  echo
  echo "- script: $SCRIPT ($([[ $SCRIPT == select ]] && echo 'pgbench -S' || echo 'tpcb-like')), clients $CLIENTS, threads $JOBS, pool $POOL, scale $SCALE, ${DURATION}s per run after ${WARMUP}s warm-up"
  if ! has_target pgdyno; then
    echo "- pgdyno: not run (repository at git $GIT_REV)"
  elif ((PGDYNO_BUILT)); then
    echo "- pgdyno: $PGDYNO_BIN built from the work tree at git $GIT_REV $PGDYNO_EXTRA_ARGS"
  else
    echo "- pgdyno: $PGDYNO_BIN (given with PGDYNO_BIN; the repository is at git $GIT_REV) $PGDYNO_EXTRA_ARGS"
  fi
  echo "- $("$POSTGRES" --version), PgBouncer $PGB_VERSION, $("$PGBENCH" --version)"
  if [[ $TLS_RUNS == *on* ]]; then
    echo "- TLS: runs with tls=on use sslmode=require from pgbench to the pooler and from the pooler to PostgreSQL (direct: pgbench to PostgreSQL), long-lived connections; ECDSA P-256 certificates from a throwaway CA ($("$OPENSSL" version | cut -d" " -f1-2)); ratios compare rows of the same tls. Negotiated, after each target's runs:"
    sed 's/^/  /' "$TLS_NOTES"
  fi
  echo "- $NCPU CPUs, $(uname -sr), load average before: $LOAD_BEFORE"
  echo "- CPU figures are µs per transaction from /proc: processes' utime+stime (threads and exited children included); total = all busy CPU of the machine (/proc/stat); pooler_sys_share_pct = the pooler's stime as a share of its CPU"
  echo "- other_cpu_pct: busy process CPU outside pgbench, PostgreSQL and the pooler; steal_pct: vCPU time the hypervisor took; both as a share of all $NCPU CPUs over the run, and both should be near 0"
  echo
  awk -F',' 'NR == 1 { h = "|"; s = "|"; for (i = 1; i <= NF; i++) { h = h " " $i " |"; s = s "---|" }; print h; print s; next }
    { l = "|"; for (i = 1; i <= NF; i++) l = l " " $i " |"; print l }' "$CSV"
} >"$MD"

echo
awk -F, -v OFS=, -v cols="target mode tls tps latency_ms failed pooler_us_per_txn pooler_cpu_vs_pgbouncer postgres_us_per_txn pgbench_us_per_txn other_cpu_pct steal_pct tps_vs_direct tps_vs_pgbouncer status" '
  NR == 1 { for (i = 1; i <= NF; i++) at[$i] = i; n = split(cols, c, " ") }
  { l = ""; for (k = 1; k <= n; k++) l = l (k > 1 ? OFS : "") $at[c[k]]; print l }' "$CSV" |
  sed 's/_per_txn//g; s/_pct/%/g; s/pooler_cpu_vs_pgbouncer/cpu_vs_pgb/' | column -t -s,
echo

noisy=$(awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) at[$i] = i; next }
  { o = $at["other_cpu_pct"]; st = $at["steal_pct"] }
  o != "NA" && (o + 0 > 5 || st + 0 > 5) {
    print "  " $1 "/" $2 (($at["tls"] == "on") ? "/tls" : "") ": other " o "%, steal " st "% (" $at["top_other_processes"] ")" }' "$CSV")
if [[ -n $noisy ]]; then
  log "warning: something else used the CPUs during these runs; their figures are disturbed:"
  printf '%s\n' "$noisy" >&2
fi
logs=$(save_logs)
echo "results: $MD"
echo "         $CSV"
echo "logs:    $logs"
((STARTED_OK == 1)) || exit 1
