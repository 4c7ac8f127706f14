# Helpers for the scripts that start a throwaway PostgreSQL and a pgdyno in
# front of it (quickstart.sh, pgo-build.sh, tests/clients/run.sh); sourced,
# not run.

# The directory of PostgreSQL's server binaries (initdb, pg_ctl, postgres):
# those on PATH, else Debian's newest under /usr/lib/postgresql.
find_pg_bin() {
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(readlink -f "$(command -v initdb)")"
    return
  fi
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  if [[ -z $dir ]]; then
    echo "${0##*/}: PostgreSQL server binaries not found (Debian: apt-get install postgresql)" >&2
    exit 1
  fi
  echo "$dir"
}

# A TCP port free on 127.0.0.1 now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Runs a command as the `nobody` user when run as root (PostgreSQL refuses
# to run as root), else as is.
as_pg() { if [[ $(id -u) == 0 ]]; then runuser -u nobody -- "$@"; else "$@"; fi; }

# Makes $TMP, a temp dir PostgreSQL's user can enter, and $PIDS, the
# processes to stop at exit; at exit, stops them (SIGINT: pgdyno closes each
# client as its transaction ends) and the PostgreSQL whose data dir is
# $TMP/data, and removes $TMP.
make_tmp() {
  TMP=$(mktemp -d "/tmp/pgdyno-$1.XXXXXX")
  chmod 755 "$TMP"
  PIDS=()
  trap stop_all EXIT
}
stop_all() {
  local pid
  for pid in "${PIDS[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  if [[ -f $TMP/data/postmaster.pid ]]; then
    kill -INT "$(head -1 "$TMP/data/postmaster.pid")" 2>/dev/null || true
  fi
  sleep 1
  rm -rf "$TMP"
}

# Waits up to 10 s for process PID to accept connections on 127.0.0.1:PORT;
# fails at once if it exits first.
wait_listening() {
  local pid=$1 port=$2 _
  for _ in $(seq 100); do
    (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
