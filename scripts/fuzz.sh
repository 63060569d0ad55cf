#!/usr/bin/env bash
# Fuzz every target in fuzz/ for SECONDS each (default 10): the HTTP request head rules, the
# WebSocket frame reader, chunked ingest bodies, control messages, storage keys, Firestore documents, GCS listing
# pages and the TOML configuration. Needs the nightly toolchain (installed here) and
# cargo-fuzz (installed on first use). New inputs go to a scratch corpus; the committed seeds
# in fuzz/corpus/TARGET are read only. A crash leaves its input in fuzz/artifacts/TARGET and
# fails the run: turn it into a regression test next to the code it breaks.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
shift || true
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --quiet
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir fuzz)
fi
cargo +nightly fuzz build --fuzz-dir fuzz >/dev/null 2>&1 || cargo +nightly fuzz build --fuzz-dir fuzz
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  start=$(date +%s)
  cargo +nightly fuzz run --fuzz-dir fuzz "$t" "$scratch/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$scratch/$t.log" 2>&1 || { tail -40 "$scratch/$t.log"; echo "fuzz: $t failed" >&2; exit 1; }
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$scratch/$t.log" | grep -o '[0-9]*$' || echo "?")
  echo "fuzz: $t: ${runs} runs in $(( $(date +%s) - start )) s, no crash"
done
