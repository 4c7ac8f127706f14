#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets/) for a bounded time.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]   # default 60
#   scripts/fuzz.sh --smoke                # 5 s per target (CI)
#   scripts/fuzz.sh 300 startup scram_server   # only these targets
#
# Installs cargo-fuzz (and a nightly toolchain) if missing, builds the
# targets with AddressSanitizer, seeds each target's scratch corpus
# (fuzz/corpus/<target>, git-ignored) from fuzz/seeds/<target> and
# fuzz/regressions/<target>, runs it, and prints executions and findings
# per target. A crash, a hang (-timeout) or running out of memory
# (-rss_limit_mb) leaves its input in fuzz/artifacts/<target>/ and makes
# the script exit 1.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET=60
[[ ${1:-} == --smoke ]] && { SECONDS_PER_TARGET=5; shift; }
[[ ${1:-} =~ ^[0-9]+$ ]] && { SECONDS_PER_TARGET=$1; shift; }
TIMEOUT=${FUZZ_TIMEOUT:-10}      # seconds one input may take: longer is a hang
RSS_LIMIT=${FUZZ_RSS_LIMIT_MB:-2048}

rustup toolchain list | grep -q '^nightly' ||
  rustup toolchain install nightly --profile minimal
cargo +nightly fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked

cd fuzz
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || mapfile -t TARGETS < <(cargo +nightly fuzz list)
echo "==> building ${#TARGETS[@]} targets"
cargo +nightly fuzz build -O --debug-assertions

failed=0
summary=()
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  for src in "seeds/$t" "regressions/$t"; do
    [[ -d $src ]] && cp -n "$src"/* "corpus/$t/" 2>/dev/null || true
  done
  before=$(ls "artifacts/$t" | wc -l)
  log="artifacts/$t.log"
  echo "==> $t: ${SECONDS_PER_TARGET}s"
  rc=0
  cargo +nightly fuzz run -O --debug-assertions "$t" "corpus/$t" -- \
    -max_total_time="$SECONDS_PER_TARGET" -timeout="$TIMEOUT" -rss_limit_mb="$RSS_LIMIT" \
    -print_final_stats=1 -artifact_prefix="artifacts/$t/" >"$log" 2>&1 || rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
  new=$(( $(ls "artifacts/$t" | wc -l) - before ))
  if [[ $rc -ne 0 || $new -gt 0 ]]; then
    failed=1
    status="FAILED (exit $rc; $new new in fuzz/artifacts/$t/; log fuzz/$log)"
    grep -m3 -E 'panicked|ERROR: libFuzzer|SUMMARY' "$log" | sed 's/^/    /' || true
  else
    status=ok
  fi
  summary+=("$(printf '%-18s %12s execs  cov %-6s corpus %-5s %s' "$t" "${execs:-?}" "${cov:-?}" \
    "$(ls "corpus/$t" | wc -l)" "$status")")
done

echo
echo "==> fuzz summary (${SECONDS_PER_TARGET}s per target)"
printf '%s\n' "${summary[@]}"
exit "$failed"
