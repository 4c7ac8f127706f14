#!/usr/bin/env bash
# A profile-guided release build of pgdyno: the binary benches/load.sh
# measures and the one to run in production.
#
#   scripts/pgo-build.sh            -> target/pgo/release/pgdyno
#
# Three steps; the two builds each have a target directory of their own
# (their RUSTFLAGS differ, so they do not evict the plain release build):
#   1. an instrumented release build (-Cprofile-generate);
#   2. training: that binary in front of a throwaway PostgreSQL (initdb into a
#      temp dir, 127.0.0.1, a free port, SSL on; as the `nobody` user when
#      run as root), serving pgbench: the simple, extended and prepared
#      protocols, tpcb-like writes and a new connection per transaction
#      (SCRAM logins) in plain text, and then simple selects with TLS on
#      both legs, so no path users run is left to be laid out as cold;
#   3. the release build again with that profile (-Cprofile-use).
# The profile tells LLVM which branches the relay takes: the per-transaction
# path is laid out together and inlined by measurement rather than by
# guess. On this 2-core machine it ran 21% fewer user-space instructions
# per pgbench select and missed the instruction cache 28% less often (see
# README.md, "Compared with PgBouncer").
#
# rustc tracks the profile file, so step 3 rebuilds every crate each time a
# new profile is written (about 2.5 minutes on two cores); step 1 is cargo's
# usual incremental build.
#
# Needs: llvm-profdata (rustup's llvm-tools component, which it adds if need
# be, or Debian's llvm-19), PostgreSQL's server binaries, pgbench, openssl and
# python3 (Debian: apt-get install postgresql postgresql-client openssl).
# Takes two release builds plus about a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
TARGET_ROOT=${CARGO_TARGET_DIR:-$REPO/target}
OUT=$TARGET_ROOT/pgo

die() { echo "pgo-build: $*" >&2; exit 1; }
step() { echo "==> $*" >&2; }

# llvm-profdata: rustup's llvm-tools, else Debian's llvm-19 or newer (it reads
# rustc's raw profiles; Debian's default llvm-profdata, LLVM 14, does not),
# else rustup adds llvm-tools.
profdata() {
  local tool version
  tool="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata"
  [[ -x $tool ]] && { echo "$tool"; return; }
  for version in 22 21 20 19; do
    command -v "llvm-profdata-$version" && return
  done
  command -v rustup >/dev/null || die "no llvm-profdata: rustup component add llvm-tools, or apt-get install llvm-19"
  rustup component add llvm-tools >&2 || die "rustup component add llvm-tools failed (apt-get install llvm-19 serves too)"
  [[ -x $tool ]] || die "llvm-profdata not found at $tool"
  echo "$tool"
}

. scripts/pg.sh

PROFDATA=$(profdata)
PG_BIN=$(find_pg_bin)
command -v openssl >/dev/null || die "openssl not found (apt-get install openssl)"
PGBENCH=$PG_BIN/pgbench
[[ -x $PGBENCH ]] || PGBENCH=$(command -v pgbench) || die "pgbench not found (apt-get install postgresql-client)"

make_tmp pgo

step "1/3 instrumented build (target dir $OUT-gen)"
RUSTFLAGS="-Cprofile-generate=$OUT-gen/profiles" CARGO_TARGET_DIR="$OUT-gen" \
  cargo build --release --locked --bin pgdyno
INSTRUMENTED=$OUT-gen/release/pgdyno

step "2/3 training: pgbench through the instrumented pgdyno"
PG_PORT=$(free_port)
PASSWORD=pgo-training
mkdir "$TMP/data" "$TMP/profiles"
echo "$PASSWORD" >"$TMP/pwfile"
(
  cd "$TMP"
  umask 077
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=localhost -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    -keyout tls.key -out tls.crt
) >"$TMP/openssl.log" 2>&1 || { cat "$TMP/openssl.log" >&2; die "openssl failed"; }
[[ $(id -u) == 0 ]] && chown -R nobody "$TMP"
as_pg "$PG_BIN/initdb" -D "$TMP/data" -U app --auth=scram-sha-256 --pwfile="$TMP/pwfile" >"$TMP/initdb.log"
as_pg "$PG_BIN/pg_ctl" -D "$TMP/data" -l "$TMP/postgres.log" -w -o \
  "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $TMP -c fsync=off -c max_connections=60 -c ssl=on -c ssl_cert_file=$TMP/tls.crt -c ssl_key_file=$TMP/tls.key" \
  start >/dev/null
export PGPASSWORD=$PASSWORD
"$PGBENCH" -i -s 2 -q -h 127.0.0.1 -p "$PG_PORT" -U app postgres >"$TMP/init.log" 2>&1 ||
  { cat "$TMP/init.log" >&2; die "pgbench -i failed"; }

# Starts the instrumented pgdyno with extra flags; its profile goes to
# $TMP/profiles when it exits.
start_pgdyno() {
  PORT=$(free_port)
  LLVM_PROFILE_FILE="$TMP/profiles/pgdyno-%p.profraw" "$INSTRUMENTED" --listen "127.0.0.1:$PORT" \
    --upstream "postgres://app:$PASSWORD@127.0.0.1:$PG_PORT/postgres" \
    --pool-mode transaction --pool-size 16 --max-client-conn 200 --log-level warn "$@" \
    2>>"$TMP/pgdyno.log" &
  PIDS+=($!)
  wait_listening "${PIDS[-1]}" "$PORT" || die "pgdyno did not start: $(tail -5 "$TMP/pgdyno.log")"
}
# pgbench through pgdyno; every transaction must succeed.
load() {
  "$PGBENCH" -h 127.0.0.1 -p "$PORT" -U app -n -j 2 "$@" postgres >"$TMP/pgbench.out" 2>&1 ||
    { cat "$TMP/pgbench.out" >&2; die "pgbench $* failed"; }
  if grep -q '^number of failed transactions: [1-9]' "$TMP/pgbench.out"; then
    cat "$TMP/pgbench.out" >&2
    die "pgbench $*: transactions failed"
  fi
  echo "    pgbench $*: $(grep -E '^tps' "$TMP/pgbench.out" | cut -d' ' -f1-3)" >&2
}
# Stops the last pgdyno started (SIGINT: it exits once its clients are
# gone), so that it writes its profile.
stop_pgdyno() {
  local pid=${PIDS[-1]}
  kill -INT "$pid"
  wait "$pid" || true
  unset 'PIDS[-1]'
}

start_pgdyno --server-tls-sslmode disable
for mode in simple extended prepared; do load -S -M "$mode" -c 16 -T 5; done
load -c 8 -T 4
load -S -C -c 4 -T 3
stop_pgdyno
start_pgdyno --server-tls-sslmode require --client-tls-sslmode allow \
  --client-tls-cert-file "$TMP/tls.crt" --client-tls-key-file "$TMP/tls.key"
PGSSLMODE=require load -S -c 16 -T 4
stop_pgdyno
compgen -G "$TMP/profiles/*.profraw" >/dev/null || die "the instrumented pgdyno wrote no profile"
mkdir -p "$OUT"
"$PROFDATA" merge -o "$OUT/pgdyno.profdata" "$TMP"/profiles/*.profraw

step "3/3 release build with the profile (target dir $OUT)"
RUSTFLAGS="-Cprofile-use=$OUT/pgdyno.profdata" CARGO_TARGET_DIR="$OUT" \
  cargo build --release --locked --bin pgdyno
step "built $OUT/release/pgdyno"
