#!/usr/bin/env bash
# Soak test (bench/soak.py): a mixed load for MINUTES (default 30) against a relay started
# here on 127.0.0.1:18080 (admin 127.0.0.1:19090) with a 64 MiB cache and a scratch storage
# directory: a producer writing two live streams, 40 viewers that subscribe, read, `get`
# VOD objects and reconnect, 20 stalled viewers, a ticket revoked every ~12 s, a SIGHUP every
# 3 minutes, and the relay's RSS, fds, CPU and metrics sampled every 10 s. Writes
# bench/SOAK.md and bench/soak.png; the samples go to $SOAK_CSV (default
# /tmp/mediarelay-soak-samples.csv) and the relay's log to $SOAK_LOG
# (default /tmp/mediarelay-soak-relay.log). RELAY_BIN picks the build (default: the release
# build of this tree, built when RELAY_BIN is not set).
#   RELAY_BIN=target/release/mediarelay bench/soak.sh [MINUTES]
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-30}
relay_bin=${RELAY_BIN:-target/release/mediarelay}
[ -n "${RELAY_BIN:-}" ] || cargo build --release --locked >/dev/null
python3 -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt matplotlib
csv=${SOAK_CSV:-/tmp/mediarelay-soak-samples.csv}
log_copy=${SOAK_LOG:-/tmp/mediarelay-soak-relay.log}
work=$(mktemp -d /tmp/mediarelay-soak.XXXXXX)
relay=
cleanup() {
  if [ -n "$relay" ]; then
    kill "$relay" 2>/dev/null || true
    wait "$relay" 2>/dev/null || true
  fi
  cp "$work/relay.log" "$log_copy" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/media"
ticket=$("$relay_bin" ticket issue --tickets "$work/tickets.json" --uid soak --streams '*' \
  --ttl "$((minutes + 30))m")
MEDIARELAY_LOG_LEVEL=warn MEDIARELAY_CACHE_SIZE=64MiB "$relay_bin" serve \
  --listen 127.0.0.1:18080 --admin 127.0.0.1:19090 \
  --storage "$work/media" --tickets "$work/tickets.json" 2>"$work/relay.log" &
relay=$!
ready=
for _ in $(seq 100); do
  if curl -sf 127.0.0.1:19090/readyz >/dev/null 2>&1; then ready=1; break; fi
  sleep 0.1
done
[ -n "$ready" ] || { echo "relay not ready after 10 s:" >&2; cat "$work/relay.log" >&2; exit 1; }
python3 bench/soak.py --minutes "$minutes" --addr 127.0.0.1:18080 --admin 127.0.0.1:19090 \
  --ticket "$ticket" --pid "$relay" --relay-bin "$relay_bin" --storage "$work/media" \
  --tickets "$work/tickets.json" --log "$work/relay.log" --csv "$csv" \
  --md bench/SOAK.md --png bench/soak.png
