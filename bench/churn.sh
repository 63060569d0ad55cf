#!/usr/bin/env bash
# Subscription churn (bench/churn.py) against a relay started here on 127.0.0.1:18080 with
# its defaults and an empty storage directory. RELAY_BIN picks the build (default: the
# release build of this tree); extra flags go to churn.py (--duration, --rate, --threads).
#   bench/churn.sh [--duration 20 --rate 300]
set -euo pipefail
cd "$(dirname "$0")/.."
relay_bin=${RELAY_BIN:-target/release/mediarelay}
[ -n "${RELAY_BIN:-}" ] || cargo build --release --locked >/dev/null
python3 -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
work=$(mktemp -d)
trap 'kill "$relay" 2>/dev/null || true; wait "$relay" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/media"
ticket=$("$relay_bin" ticket issue --tickets "$work/tickets.json" --uid churn --streams '*' --ttl 1h)
MEDIARELAY_LOG_LEVEL=warn "$relay_bin" serve --listen 127.0.0.1:18080 --admin 127.0.0.1:19090 \
  --storage "$work/media" --tickets "$work/tickets.json" &
relay=$!
for _ in $(seq 100); do
  curl -sf 127.0.0.1:19090/readyz >/dev/null 2>&1 && break
  sleep 0.1
done
python3 bench/churn.py --addr 127.0.0.1:18080 --admin 127.0.0.1:19090 --ticket "$ticket" \
  --pid "$relay" "$@"
