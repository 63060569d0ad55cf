#!/usr/bin/env bash
# Plain vs TLS measurements of mediarelay with wsload (Node.js + ws), cross-checked on
# plain text with mediarelay-load. Loopback only, every step bounded. See README.md.
#
#   bench/wsload/run.sh [--rounds N] [--only vod-1m,vod-64k,fanout,fanout-light,idle,connect] [--out FILE]
#
# Needs: node >= 20 (npm ci here), openssl, the release binaries (RELAY, LOAD below; by
# default target/release/ of this checkout: cargo build --release --workspace).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
rounds=3 only="" out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "usage: $0 [--rounds N] [--only LIST] [--out FILE]" >&2; exit 2 ;;
  esac
done
pick() { for p in "$@"; do [ -x "$p" ] && { echo "$p"; return; }; done; echo "missing: $1" >&2; exit 1; }
RELAY=${RELAY:-$(pick "$root/target/release/mediarelay")}
LOAD=${LOAD:-$(pick "$root/target/release/mediarelay-load")}
[ -d "$here/node_modules/ws" ] || (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
ulimit -n 20000
log() { echo "wsload-bench: $*" >&2; }

work=$(mktemp -d -t wsload-bench.XXXXXX)
out=${out:-$work/runs.jsonl}
: >"$out"
relay_pid=""
stop_relay() { [ -n "$relay_pid" ] && kill "$relay_pid" 2>/dev/null && wait "$relay_pid" 2>/dev/null; relay_pid=""; }
trap 'stop_relay; log "raw reports: $out"' EXIT

# --- scratch: objects, ticket, test CA + server certificate ------------------------------
media=$work/media
mkdir -p "$media/vod/large" "$media/vod/small" "$media/live"
for i in $(seq 0 63); do
  head -c 1048576 /dev/urandom >"$media/vod/large/$i.bin"
  head -c 65536 /dev/urandom >"$media/vod/small/$i.bin"
done
"$RELAY" ticket issue --tickets "$work/tickets.json" --uid bench --streams '*' --ttl 2h >"$work/ticket"
"$root/bench/test-ca.sh" "$work" wsload-test-CA >/dev/null 2>&1

TLS_PORT=${TLS_PORT:-28443} PLAIN_PORT=${PLAIN_PORT:-28080} ADMIN_PORT=${ADMIN_PORT:-29090}
# The relay's per-connection request budget (1000/s) is raised so that it does not cap vod-64k.
export MEDIARELAY_MAX_REQUESTS_PER_SEC=${MEDIARELAY_MAX_REQUESTS_PER_SEC:-1000000}
export MEDIARELAY_AUTH_FAILURE_LIMIT=0

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; log "nothing on $1"; exit 1; }
# start_relay both|plain|tls
start_relay() {
  stop_relay
  local args=(serve --admin "127.0.0.1:$ADMIN_PORT" --storage "$media" --tickets "$work/tickets.json" --log-level warn)
  case $1 in
    both) args+=(--listen "127.0.0.1:$TLS_PORT" --tls-cert "$work/cert.pem" --tls-key "$work/key.pem" --listen-plain "127.0.0.1:$PLAIN_PORT") ;;
    tls) args+=(--listen "127.0.0.1:$TLS_PORT" --tls-cert "$work/cert.pem" --tls-key "$work/key.pem") ;;
    plain) args+=(--listen "127.0.0.1:$PLAIN_PORT") ;;
  esac
  for p in $TLS_PORT $PLAIN_PORT $ADMIN_PORT; do
    for _ in $(seq 100); do port_free $p && break; sleep 0.1; done
    port_free $p || { log "127.0.0.1:$p is in use by something else"; exit 1; }
  done
  "$RELAY" "${args[@]}" 2>>"$work/relay.log" &
  relay_pid=$!
  export relay_pid
  [ "$1" = plain ] || wait_port $TLS_PORT
  [ "$1" = tls ] || wait_port $PLAIN_PORT
  kill -0 $relay_pid 2>/dev/null || { log "the relay did not start: $(tail -1 "$work/relay.log")"; exit 1; }
}

wanted() { [ -z "$only" ] || [[ ",$only," == *",$1,"* ]]; }
# What else is using the machine (the other processes' CPU over the last 2 s).
noise() {
  local top
  top=$(top -b -n 2 -d 1 -o %CPU | awk '/^top -/{n++} n==2 && /^ *[0-9]+ /{ if ($9+0 > 5) printf "%s:%s%% ", $12, $9 }' | head -c 300)
  echo "load $(cut -d' ' -f1-3 /proc/loadavg); busy: ${top:-none}"
}

# The machine's busy CPU seconds so far (/proc/stat: user nice system irq softirq steal).
busy() { awk -v hz="$(getconf CLK_TCK)" '/^cpu /{printf "%.2f", ($2+$3+$4+$7+$8+$9)/hz; exit}' /proc/stat; }
# run WORKLOAD CLIENT TRANSPORT ROUND CMD...: one run, its report appended to $out (with the
# machine's busy CPU seconds during the run: busy - server - client = what else ran).
run() {
  local workload=$1 client=$2 transport=$3 round=$4; shift 4
  local n report b0 b1
  n=$(noise)
  b0=$(busy)
  log "round $round: $workload $client $transport ($n)"
  if report=$(timeout 180 bash -c '"$@"' run "$@" 2>"$work/client.err") && kill -0 "$relay_pid" 2>/dev/null; then
    b1=$(busy)
    printf '{"workload":"%s","client":"%s","transport":"%s","round":%s,"noise":"%s","machine_busy_cpu_seconds":%s,"report":%s}\n' \
      "$workload" "$client" "$transport" "$round" "$n" "$(echo "$b1 - $b0" | bc)" "$report" >>"$out"
  else
    log "$workload $client $transport failed: $(tail -3 "$work/client.err")"
    printf '{"workload":"%s","client":"%s","transport":"%s","round":%s,"noise":"%s","error":true}\n' \
      "$workload" "$client" "$transport" "$round" "$n" >>"$out"
  fi
}

T=$(cat "$work/ticket")
WS() { # transport args...
  local t=$1; shift
  if [ "$t" = tls ]; then
    node "$here/wsload.mjs" --addr "127.0.0.1:$TLS_PORT" --ca "$work/ca.pem" --servername localhost \
      --ticket-file "$work/ticket" --server-pid "$relay_pid" --quiet "$@"
  else
    node "$here/wsload.mjs" --addr "127.0.0.1:$PLAIN_PORT" --ticket-file "$work/ticket" --server-pid "$relay_pid" --quiet "$@"
  fi
}
ML() { "$LOAD" --addr "127.0.0.1:$PLAIN_PORT" --ticket "$T" --server-pid "$relay_pid" --json "$@"; }
# run calls them under timeout(1), in a child bash
export -f WS ML
export here work T LOAD TLS_PORT PLAIN_PORT

for round in $(seq 1 "$rounds"); do
  if [ $((round % 2)) = 1 ]; then order=(plain tls); else order=(tls plain); fi
  if wanted vod-1m || wanted vod-64k || wanted fanout || wanted fanout-light; then
    start_relay both
    # Warm the relay's cache: every object once.
    WS plain vod --connections 8 --inflight 4 --prefix vod/large/ --keys 64 --duration 2 >/dev/null
    WS plain vod --connections 8 --inflight 4 --prefix vod/small/ --keys 64 --duration 1 >/dev/null
    for w in vod-1m vod-64k; do
      wanted $w || continue
      prefix=vod/large/; [ $w = vod-64k ] && prefix=vod/small/
      for t in "${order[@]}"; do
        run $w wsload $t "$round" WS $t vod --connections 100 --inflight 4 --prefix $prefix --keys 64 --duration 20
      done
      run $w mediarelay-load plain "$round" ML vod --connections 100 --inflight 4 --prefix $prefix --keys 64 --count 100000000 --duration 20
    done
    if wanted fanout; then
      for t in "${order[@]}"; do
        run fanout wsload $t "$round" WS $t fanout --subscribers 1000 --storage "$media" --stream "live/f-$round-ws-$t" \
          --size 65536 --rate 25 --count 500 --duration 60
      done
      run fanout mediarelay-load plain "$round" ML fanout --subscribers 1000 --storage "$media" --stream "live/f-$round-ml" \
        --size 65536 --rate 25 --count 500 --duration 60
    fi
    # The same at a fifth of the rate (~0.33 GB/s): within what one Node.js thread can take
    # over TLS, so that wsload measures the relay rather than itself.
    if wanted fanout-light; then
      for t in "${order[@]}"; do
        run fanout-light wsload $t "$round" WS $t fanout --subscribers 1000 --storage "$media" --stream "live/l-$round-ws-$t" \
          --size 65536 --rate 5 --count 100 --duration 60
      done
      run fanout-light mediarelay-load plain "$round" ML fanout --subscribers 1000 --storage "$media" --stream "live/l-$round-ml" \
        --size 65536 --rate 5 --count 100 --duration 60
    fi
  fi
  if wanted idle; then
    for t in "${order[@]}"; do
      start_relay $t
      sleep 1
      run idle wsload $t "$round" WS $t idle --connections 10000 --hold 5 --concurrency 256
    done
  fi
  if wanted connect; then
    start_relay both
    for t in "${order[@]}"; do
      n=5000; [ $t = tls ] && n=3000
      run connect wsload $t "$round" WS $t connect --count $n --concurrency 16
    done
  fi
done
stop_relay
python3 "$here/summarize.py" "$out" || true
