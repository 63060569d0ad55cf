#!/usr/bin/env bash
# Reproduce the relay-core figures on this machine, loopback only, bounded in time:
#   loadtest/run.sh idle     15,000 idle authenticated connections -> server KiB/connection
#   loadtest/run.sh fanout   1,000 subscribers, 1 MiB segments     -> bytes/s, CPU-s/GB, lag
#   loadtest/run.sh vod      100 connections, 2 gets in flight, 100 cached 1 MiB objects
# Builds the release binaries, starts a relay on 127.0.0.1:18080 with a scratch storage
# directory and ticket file, runs the load generator with --server-pid, stops the relay.
# RELAY_BIN and LOAD_BIN run other builds instead (to compare two versions in one session).
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=${1:-fanout}
shift || true

relay_bin=${RELAY_BIN:-target/release/mediarelay}
load_bin=${LOAD_BIN:-target/release/mediarelay-load}
if [ -z "${RELAY_BIN:-}" ] || [ -z "${LOAD_BIN:-}" ]; then
  cargo build --release --workspace --locked >/dev/null
fi
work=$(mktemp -d)
trap 'kill "$relay" 2>/dev/null || true; wait "$relay" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/media"
ticket=$("$relay_bin" ticket issue --tickets "$work/tickets.json" --uid load --streams '*' --ttl 1h)
MEDIARELAY_LOG_LEVEL=warn "$relay_bin" serve --listen 127.0.0.1:18080 \
  --admin 127.0.0.1:19090 --storage "$work/media" --tickets "$work/tickets.json" &
relay=$!
for _ in $(seq 100); do
  curl -sf 127.0.0.1:19090/readyz >/dev/null 2>&1 && break
  sleep 0.1
done
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, $(uname -r)" >&2
load=("$load_bin" --addr 127.0.0.1:18080 --ticket "$ticket" --server-pid "$relay")
case "$scenario" in
  idle)
    "${load[@]}" idle --connections 15000 --hold 3 "$@" ;;
  fanout)
    "${load[@]}" fanout --subscribers 1000 --storage "$work/media" --stream live/fanout \
      --size 1048576 --rate 2 --count 30 --duration 90 "$@" ;;
  vod)
    mkdir -p "$work/media/vod/large"
    for i in $(seq 0 99); do head -c 1048576 /dev/urandom >"$work/media/vod/large/$i.bin"; done
    # One pass over every key fills the cache; the measured run is served from it.
    "${load[@]}" gets --prefix vod/large/ --suffix .bin --count 100 --connections 4 >/dev/null
    "${load[@]}" vod --connections 100 --inflight 2 --prefix vod/large/ --suffix .bin --keys 100 \
      --count 20000 --duration 60 "$@" ;;
  *) echo "usage: $0 idle|fanout|vod [extra flags]" >&2; exit 2 ;;
esac
