#!/usr/bin/env bash
# Reproduce the relay-core figures on this machine, loopback only, bounded in time:
#   loadtest/run.sh idle     15,000 idle authenticated connections -> server KiB/connection
#   loadtest/run.sh fanout   1,000 subscribers, 1 MiB segments     -> bytes/s, CPU-s/GB, lag
# Builds the release binaries, starts a relay on 127.0.0.1:18080 with a scratch storage
# directory and ticket file, runs the load generator with --server-pid, stops the relay.
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=${1:-fanout}
shift || true

cargo build --release --workspace --locked >/dev/null
work=$(mktemp -d)
trap 'kill "$relay" 2>/dev/null || true; wait "$relay" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/media"
ticket=$(target/release/mediarelay ticket issue --tickets "$work/tickets.json" --uid load --streams '*' --ttl 1h)
MEDIARELAY_LOG_LEVEL=warn target/release/mediarelay serve --listen 127.0.0.1:18080 \
  --admin 127.0.0.1:19090 --storage "$work/media" --tickets "$work/tickets.json" &
relay=$!
for _ in $(seq 100); do
  curl -sf 127.0.0.1:19090/readyz >/dev/null 2>&1 && break
  sleep 0.1
done
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, $(uname -r)" >&2
load=(target/release/mediarelay-load --addr 127.0.0.1:18080 --ticket "$ticket" --server-pid "$relay")
case "$scenario" in
  idle)
    "${load[@]}" idle --connections 15000 --hold 3 "$@" ;;
  fanout)
    "${load[@]}" fanout --subscribers 1000 --storage "$work/media" --stream live/fanout \
      --size 1048576 --rate 2 --count 30 --duration 90 "$@" ;;
  *) echo "usage: $0 idle|fanout [extra flags]" >&2; exit 2 ;;
esac
