#!/usr/bin/env bash
# Side-by-side benchmark, one run on this machine, loopback only, every step bounded:
#   mediarelay   vs  mediarelay (writev): the same binary with MEDIARELAY_SEND_PATH=writev,
#                    its copying send path (the default is sendfile), on its own ports
#                    nginx (Debian, sendfile; vod over HTTP/1.1 keep-alive)
#                    Node.js ws, uWebSockets.js, NestJS + socket.io (bench/peers/)
#                    iperf3 over loopback (single stream and -P 4): the physical reference
#   and over TLS (the wss-* workloads): mediarelay --tls-cert/--tls-key vs nginx `ssl`
#   (vod over HTTPS) and uWebSockets.js SSLApp, on a test CA + EC P-256 certificate made here
# Two load clients (--clients, default both): mediarelay-load (Rust) drives everything;
# wsload (bench/wsload/, Node.js + ws) repeats each run of idle, vod-1m, vod-64k, fanout-64k,
# fanout-1m, fanout-half and fanout-1m-light right after mediarelay-load's, with the same
# parameters (vod on nginx: wsload --http). wsload speaks no socket.io, so NestJS is only
# measured with mediarelay-load; mixed, connect and the wss-* workloads are
# mediarelay-load only (--clients picks the clients of the seven above only).
# mediarelay (writev) takes part in every plain workload mediarelay takes part in (idle,
# vod, fanout, mixed, connect), not in the wss-* ones.
# Workloads (full; --quick in brackets): idle 15,000 connections [500]; vod-1m, vod-64k:
# 100 connections x 2 in flight, 20,000 replies [400] or 20 s; fanout-64k: 1,000 [100]
# subscribers, 64 KiB at 50/s, 250 [50] segments; fanout-1m: 1 MiB at 20/s, 100 [20];
# fanout-half: 64 KiB at a fixed 25/s, 250 [50]; fanout-1m-light: 1 MiB at 2/s, 20 [6];
# mixed: 900 [100] normal + 50 slow + 50 stalled, 64 KiB at 25/s; connect: 20,000 [2,000]
# upgrades. fanout-half and fanout-1m-light run on every WebSocket server except NestJS,
# the others on every WebSocket server (vod on nginx too). Then, per round, the wss-*
# workloads (wss-idle: 10,000 idle TLS connections on mediarelay and uWebSockets.js SSLApp),
# iperf3 and loopback-1m.
# Every configuration runs --runs times (default 3), servers alternating (the order
# rotates each round), each server restarted at the start of every round. Writes raw
# reports to bench/results/ (one JSON line per run, with "client": mediarelay-load or
# wsload) and the summary to bench/RESULTS.md (bench/summarize.py).
#
#   bench/compare.sh                 the full run (roughly 50 minutes on 2 cores; about 30
#                                    with --clients mediarelay-load)
#   bench/compare.sh --quick         small N, one round (both clients), summary to bench/results/QUICK.md
#   bench/compare.sh --runs 5 --only vod-1m,idle
#   bench/compare.sh --clients mediarelay-load     no wsload runs
#   bench/compare.sh --runs 1 --only wss-vod-1m,wss-connect --tag tls   -> bench/results/tls.{jsonl,md}
#
# Installs what it needs: nginx-light and iperf3 from apt (when missing; needs root),
# the peers' npm packages (npm ci in bench/peers; in bench/wsload when its node_modules is
# missing), the release binaries (cargo; not when RELAY_BIN and LOAD_BIN name them).
# --tag NAME writes bench/results/NAME.jsonl and NAME.md instead of runs.jsonl and
# RESULTS.md. The wss-* durations: WSS_VOD_SECS (default 20; the wss vod runs are bounded
# by time, not by count), WSS_FANOUT_SECS (20), WSS_CONNECT_N (6000 full handshakes).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

runs=3 quick=0 only="" tag="" clients=mediarelay-load,wsload
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --quick) quick=1; runs=1; shift ;;
    --only) only=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    *) echo "usage: $0 [--quick] [--runs N] [--only workload,...] [--tag NAME] [--clients mediarelay-load,wsload]" >&2; exit 2 ;;
  esac
done
for c in ${clients//,/ }; do
  case "$c" in mediarelay-load | wsload) ;; *) echo "$0: unknown client $c (mediarelay-load, wsload)" >&2; exit 2 ;; esac
done
# client_wanted NAME: NAME is in --clients.
client_wanted() { [[ ",$clients," == *",$1,"* ]]; }

log() { echo "compare: $*" >&2; }

# --- install ---------------------------------------------------------------------------
if ! command -v nginx >/dev/null || ! command -v iperf3 >/dev/null; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  log "installing nginx-light and iperf3 (apt)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nginx-light iperf3 >/dev/null
fi
log "installing the peers' npm packages"
(cd bench/peers && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
if client_wanted wsload && [ ! -d bench/wsload/node_modules/ws ]; then
  log "installing wsload's npm packages"
  (cd bench/wsload && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
if [ -n "${RELAY_BIN:-}" ] && [ -n "${LOAD_BIN:-}" ]; then
  relay_bin=$RELAY_BIN load_bin=$LOAD_BIN
else
  log "building release binaries"
  cargo build --release --workspace --locked 2>&1 | tail -1 >&2
  relay_bin=$root/target/release/mediarelay
  load_bin=$root/target/release/mediarelay-load
fi

# --- scratch: objects, ticket ----------------------------------------------------------
work=$(mktemp -d /tmp/mediarelay-compare.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
media=$work/media
mkdir -p "$media/vod/large" "$media/vod/small" "$media/live"
for i in $(seq 0 99); do
  head -c 1048576 /dev/urandom >"$media/vod/large/$i.bin"
  head -c 65536 /dev/urandom >"$media/vod/small/$i.bin"
done
chmod -R a+rX "$media"
ticket=$("$relay_bin" ticket issue --tickets "$work/tickets.json" --uid bench --streams '*' --ttl 3h)
echo "$ticket" >"$work/ticket"
# Test CA and an EC P-256 server certificate for localhost and 127.0.0.1 (wss-* workloads).
bench/test-ca.sh "$work/tls" mediarelay-compare-CA >/dev/null 2>&1 \
  || { log "openssl could not make the test certificate"; exit 1; }

out_dir=$root/bench/results
mkdir -p "$out_dir"
if [ -n "$tag" ]; then raw=$out_dir/$tag.jsonl; md=$out_dir/$tag.md
elif [ "$quick" = 1 ]; then raw=$out_dir/quick.jsonl; md=$out_dir/QUICK.md; else raw=$out_dir/runs.jsonl; md=$root/bench/RESULTS.md; fi
: >"$raw"

# --- servers ---------------------------------------------------------------------------
# port per server; start_NAME sets server_pids (comma-separated) for --server-pid.
declare -A port=([mediarelay]=18080 [nginx]=18081 [ws]=18082 [uws]=18083 [nest]=18084 [mediarelay-writev]=18085)
# TLS ports (start_tls_NAME); run_load uses them while tls_args is set.
declare -A tls_port=([mediarelay]=18443 [nginx]=18444 [uws]=18445)
declare -A server_pids
tls_args=()

wait_port() {
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  log "nothing listens on $1"; return 1
}

# Refuse to start if anything already listens on a benchmark port: with SO_REUSEPORT a
# leftover server could silently share the port and take part of the load.
# A relay that has just exited can keep its listeners open for a moment: io_uring closes the
# sockets it still holds (a pending accept) in the kernel's exit work after the process is
# gone (seen here: port still listening, no process owning it, ~0.2 s after `wait`). So each
# port gets up to 5 s to become free.
ensure_free() {
  for p in "${port[@]}" "${tls_port[@]}" 19080 19081 15201; do
    for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || continue 2; sleep 0.1; done
    log "127.0.0.1:$p is already in use: stop whatever listens there first"; exit 1
  done
}

start_mediarelay() {
  MEDIARELAY_LOG_LEVEL=warn MEDIARELAY_AUTH_FAILURE_LIMIT=0 "$relay_bin" serve \
    --listen "127.0.0.1:${port[mediarelay]}" --admin 127.0.0.1:19080 \
    --storage "$media" --tickets "$work/tickets.json" &
  pids+=($!); server_pids[mediarelay]=$!
  wait_port "${port[mediarelay]}"
}
# The same relay with its copying send path (writev instead of sendfile), own ports.
start_mediarelay-writev() {
  MEDIARELAY_SEND_PATH=writev MEDIARELAY_LOG_LEVEL=warn MEDIARELAY_AUTH_FAILURE_LIMIT=0 "$relay_bin" serve \
    --listen "127.0.0.1:${port[mediarelay-writev]}" --admin 127.0.0.1:19081 \
    --storage "$media" --tickets "$work/tickets.json" &
  pids+=($!); server_pids[mediarelay-writev]=$!
  wait_port "${port[mediarelay-writev]}"
}

start_nginx() { # [tls]
  local listen="listen 127.0.0.1:${port[nginx]} reuseport;" wait_on=${port[nginx]}
  if [ "${1:-}" = tls ]; then
    # HTTP/1.1 over TLS on the same certificate; sendfile stays on (without kernel TLS nginx
    # reads the file and encrypts it with SSL_write). The server picks AES-128-GCM first, as
    # mediarelay does.
    wait_on=${tls_port[nginx]}
    listen="listen 127.0.0.1:${tls_port[nginx]} ssl reuseport;
    ssl_certificate $work/tls/cert.pem;
    ssl_certificate_key $work/tls/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_prefer_server_ciphers on;
    ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256;
    ssl_session_cache shared:SSL:10m;"
  fi
  mkdir -p "$work/nginx"
  cat >"$work/nginx/nginx.conf" <<EOF
worker_processes auto;
pid $work/nginx/nginx.pid;
error_log stderr error;
events { worker_connections 20000; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  open_file_cache max=1000 inactive=60s;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  default_type application/octet-stream;
  server {
    $listen
    root $media;
  }
}
EOF
  nginx -e stderr -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' &
  local master=$!
  pids+=($master)
  wait_port "$wait_on"
  server_pids[nginx]=$(echo "$master" $(pgrep -P "$master") | tr ' ' ',')
}

start_node() { # name script
  node "bench/peers/$2" --port "${port[$1]}" --storage "$media" --tickets "$work/tickets.json" >/dev/null &
  pids+=($!); server_pids[$1]=$!
  wait_port "${port[$1]}"
}
start_ws() { start_node ws ws-server.js; }
start_uws() { start_node uws uws-server.js; }
start_nest() { start_node nest nest-server.js; }

start_tls_mediarelay() {
  MEDIARELAY_LOG_LEVEL=warn MEDIARELAY_AUTH_FAILURE_LIMIT=0 "$relay_bin" serve \
    --listen "127.0.0.1:${tls_port[mediarelay]}" --tls-cert "$work/tls/cert.pem" --tls-key "$work/tls/key.pem" \
    --admin 127.0.0.1:19080 --storage "$media" --tickets "$work/tickets.json" &
  pids+=($!); server_pids[mediarelay]=$!
  wait_port "${tls_port[mediarelay]}"
}
start_tls_nginx() { start_nginx tls; }
start_tls_uws() {
  node bench/peers/uws-server.js --port "${tls_port[uws]}" --storage "$media" --tickets "$work/tickets.json" \
    --tls-cert "$work/tls/cert.pem" --tls-key "$work/tls/key.pem" >/dev/null &
  pids+=($!); server_pids[uws]=$!
  wait_port "${tls_port[uws]}"
}

restart() { # SERVER: stop its processes and start it again
  local p
  for p in ${server_pids[$1]//,/ }; do kill "$p" 2>/dev/null || true; done
  for p in ${server_pids[$1]//,/ }; do wait "$p" 2>/dev/null || true; done
  "start_$1"
}

stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}

# --- workloads -------------------------------------------------------------------------
if [ "$quick" = 1 ]; then
  subs=100 idle_n=500 vod_count=400 fan64_count=50 fan1m_count=20 light_count=6 connect_n=2000 mixed_subs=100 iperf_t=1 loop_mb=256
  wss_vod_count=$vod_count wss_vod_secs=${WSS_VOD_SECS:-3} wss_fan_secs=${WSS_FANOUT_SECS:-3} wss_connect_n=${WSS_CONNECT_N:-300} wss_idle_n=500
else
  subs=1000 idle_n=15000 vod_count=20000 fan64_count=250 fan1m_count=100 light_count=20 connect_n=20000 mixed_subs=900 iperf_t=5 loop_mb=2048
  wss_vod_count=1000000 wss_vod_secs=${WSS_VOD_SECS:-20} wss_fan_secs=${WSS_FANOUT_SECS:-20} wss_connect_n=${WSS_CONNECT_N:-6000} wss_idle_n=10000
fi
proto_of() { [ "$1" = nest ] && echo socketio || echo relay; }

# alive SERVER: every process of SERVER still runs (a server that died mid-run fails it).
alive() {
  local p
  for p in ${server_pids[$1]//,/ }; do
    kill -0 "$p" 2>/dev/null || { echo "$1 exited during the run" >>"$work/load.err"; return 1; }
  done
}

# record WORKLOAD SERVER CLIENT RUN SHOWN OK [REPORT]: one JSON line in $raw (OK=0: a failed run).
record() {
  if [ "$6" = 1 ]; then
    printf '{"workload":"%s","server":"%s","client":"%s","run":%s,"args":"%s","report":%s}\n' "$1" "$2" "$3" "$4" "$5" "$7" >>"$raw"
  else
    log "$1 on $2 ($3) failed: $(tail -3 "$work/load.err")"
    printf '{"workload":"%s","server":"%s","client":"%s","run":%s,"args":"%s","error":true}\n' "$1" "$2" "$3" "$4" "$5" >>"$raw"
  fi
}

# run_load WORKLOAD SERVER RUN ARGS...: one mediarelay-load run, its JSON report appended to $raw.
run_load() {
  local workload=$1 server=$2 run=$3; shift 3
  local report p=${port[$server]} shown="$*"
  if [ ${#tls_args[@]} -gt 0 ]; then
    p=${tls_port[$server]}; shown="${tls_args[*]} $*"; shown=${shown//$work\/tls\//}
  fi
  log "round $run: $workload on $server"
  if report=$(timeout 300 "$load_bin" --addr "127.0.0.1:$p" --ticket-file "$work/ticket" \
      --proto "$(proto_of "$server")" --server-pid "${server_pids[$server]}" --json "${tls_args[@]}" "$@" 2>"$work/load.err") \
      && alive "$server"; then
    record "$workload" "$server" mediarelay-load "$run" "$shown" 1 "$report"
  else
    record "$workload" "$server" mediarelay-load "$run" "$shown" 0
  fi
}

# run_wsload WORKLOAD SERVER RUN ARGS...: the same run with wsload (plain text only). ARGS are
# mediarelay-load's scenario arguments, which wsload takes as they are (vod's --http
# included); a fanout's --stream gets a -wsload suffix (a stream of its own).
run_wsload() {
  local workload=$1 server=$2 run=$3; shift 3
  local report a=() prev="" x
  for x in "$@"; do
    [ "$prev" = --stream ] && x=$x-wsload
    a+=("$x"); prev=$x
  done
  log "round $run: $workload on $server (wsload)"
  if report=$(timeout 300 node bench/wsload/wsload.mjs --addr "127.0.0.1:${port[$server]}" --ticket-file "$work/ticket" \
      --server-pid "${server_pids[$server]}" --quiet "${a[@]}" 2>"$work/load.err") \
      && alive "$server"; then
    record "$workload" "$server" wsload "$run" "${a[*]}" 1 "$report"
  else
    record "$workload" "$server" wsload "$run" "${a[*]}" 0
  fi
}

# run_clients WORKLOAD SERVER RUN ARGS...: the run with each client in --clients,
# mediarelay-load first; wsload not on nest (socket.io).
run_clients() {
  client_wanted mediarelay-load && run_load "$@"
  if client_wanted wsload && [ "$2" != nest ]; then run_wsload "$@"; fi
  return 0
}

wanted() { [ -z "$only" ] || [[ ",$only," == *",$1,"* ]]; }
# The TLS workloads: all of them in a full run, only a tiny wss-vod-64k in --quick (unless --only).
wss_workloads=(wss-idle wss-vod-1m wss-vod-64k wss-fanout-64k wss-fanout-half wss-connect wss-connect-resume)
wanted_wss() {
  if [ -z "$only" ] && [ "$quick" = 1 ]; then [ "$1" = wss-vod-64k ]; else wanted "$1"; fi
}
any_wanted() { # wanted_fn workload... -> true when any of them is wanted
  local f=$1 w; shift
  for w in "$@"; do "$f" "$w" && return 0; done
  return 1
}
plain_workloads=(idle vod-1m vod-64k fanout-64k fanout-1m fanout-half fanout-1m-light mixed connect)

rotate() { # round list... -> the list rotated by round
  local r=$1; shift
  local a=("$@") n=$#
  for ((i = 0; i < n; i++)); do echo "${a[$(((i + r) % n))]}"; done
}

ws_servers=(mediarelay mediarelay-writev uws ws nest)
vod_servers=(mediarelay mediarelay-writev nginx uws ws nest)
light_servers=(mediarelay mediarelay-writev uws ws) # fanout-half, fanout-1m-light: not NestJS
wss_ws_servers=(mediarelay uws)
wss_vod_servers=(mediarelay nginx uws)

# warm SERVER...: every object once on each WebSocket server (its cache), over TLS while tls_args is set.
warm() {
  local s p addr
  for s in "$@"; do
    addr=${port[$s]}; [ ${#tls_args[@]} -gt 0 ] && addr=${tls_port[$s]}
    for p in large small; do
      "$load_bin" --addr "127.0.0.1:$addr" --ticket-file "$work/ticket" --proto "$(proto_of "$s")" "${tls_args[@]}" \
        gets --prefix "vod/$p/" --count 100 --connections 4 >/dev/null 2>&1 || log "warm-up of $s failed"
    done
  done
}

for run in $(seq 1 "$runs"); do
  stop_all
  ensure_free
  if any_wanted wanted "${plain_workloads[@]}"; then
    for s in mediarelay mediarelay-writev nginx ws uws nest; do "start_$s"; done
    # Warm every cache: each object once.
    warm "${ws_servers[@]}"
  fi
  if wanted idle; then
    for s in $(rotate "$run" "${ws_servers[@]}"); do
      client_wanted mediarelay-load && run_load idle "$s" "$run" idle --connections "$idle_n" --hold 2
      if client_wanted wsload && [ "$s" != nest ]; then
        # idle is measured from the server's RSS before the run: a fresh process for each client.
        restart "$s"
        run_wsload idle "$s" "$run" idle --connections "$idle_n" --hold 2
      fi
    done
  fi
  for w in vod-1m vod-64k; do
    wanted "$w" || continue
    prefix=vod/large/; [ "$w" = vod-64k ] && prefix=vod/small/
    for s in $(rotate "$run" "${vod_servers[@]}"); do
      http=(); [ "$s" = nginx ] && http=(--http)
      run_clients "$w" "$s" "$run" vod --connections 100 --inflight 2 --prefix "$prefix" --keys 100 \
        --count "$vod_count" --duration 20 "${http[@]}"
    done
  done
  # fanout-64k and fanout-1m are the overload cases (they ask for about what the machine
  # delivers, or more), on every WebSocket server; fanout-half (64 KiB at a fixed 25/s) and
  # fanout-1m-light (1 MiB at 2/s) ask for less, on every WebSocket server but NestJS.
  for w in fanout-64k fanout-1m fanout-half fanout-1m-light; do
    wanted "$w" || continue
    servers=("${ws_servers[@]}")
    case $w in
      fanout-64k) size=65536 rate=50 count=$fan64_count ;;
      fanout-1m) size=1048576 rate=20 count=$fan1m_count ;;
      fanout-half) size=65536 rate=25 count=$fan64_count servers=("${light_servers[@]}") ;;
      fanout-1m-light) size=1048576 rate=2 count=$light_count servers=("${light_servers[@]}") ;;
    esac
    for s in $(rotate "$run" "${servers[@]}"); do
      run_clients "$w" "$s" "$run" fanout --subscribers "$subs" --storage "$media" --stream "live/$w-$s-$run" \
        --size "$size" --rate "$rate" --count "$count" --duration 60
    done
  done
  if wanted mixed; then
    for s in $(rotate "$run" "${ws_servers[@]}"); do
      run_load mixed "$s" "$run" mixed --subscribers "$mixed_subs" --slow 50 --stalled 50 \
        --storage "$media" --stream "live/mixed-$s-$run" --size 65536 --rate 25 --count "$fan64_count" --duration 60
    done
  fi
  if wanted connect; then
    for s in $(rotate "$run" "${ws_servers[@]}"); do
      run_load connect "$s" "$run" connect --count "$connect_n" --concurrency 64 --bad-share 0.1
    done
  fi
  if any_wanted wanted_wss "${wss_workloads[@]}"; then
    # TLS: the plain servers stop; mediarelay, nginx and uWebSockets.js start on the TLS ports
    # with the same certificate; every load run is mediarelay-load --tls --ca ca.pem.
    stop_all
    ensure_free
    for s in mediarelay nginx uws; do "start_tls_$s"; done
    tls_args=(--tls --ca "$work/tls/ca.pem" --servername localhost)
    warm "${wss_ws_servers[@]}"
    if wanted_wss wss-idle; then
      for s in $(rotate "$run" "${wss_ws_servers[@]}"); do
        run_load wss-idle "$s" "$run" idle --connections "$wss_idle_n" --hold 2
      done
    fi
    for w in wss-vod-1m wss-vod-64k; do
      wanted_wss "$w" || continue
      prefix=vod/large/; [ "$w" = wss-vod-64k ] && prefix=vod/small/
      for s in $(rotate "$run" "${wss_vod_servers[@]}"); do
        http=(); [ "$s" = nginx ] && http=(--http)
        run_load "$w" "$s" "$run" vod --connections 100 --inflight 2 --prefix "$prefix" --keys 100 \
          --count "$wss_vod_count" --duration "$wss_vod_secs" "${http[@]}"
      done
    done
    wss_max_bps=""
    if wanted_wss wss-fanout-64k || wanted_wss wss-fanout-half; then
      # 64 KiB at 50/s asks for more than TLS delivers here: what mediarelay delivered is its
      # maximum over TLS. Only mediarelay runs it when only wss-fanout-half is wanted.
      fan_servers=(mediarelay); wanted_wss wss-fanout-64k && fan_servers=("${wss_ws_servers[@]}")
      for s in $(rotate "$run" "${fan_servers[@]}"); do
        run_load wss-fanout-64k "$s" "$run" fanout --subscribers "$subs" --storage "$media" \
          --stream "live/wss-64k-$s-$run" --size 65536 --rate 50 --count "$((50 * wss_fan_secs / 2))" --duration 60
        if [ "$s" = mediarelay ]; then
          wss_max_bps=$(tail -1 "$raw" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("report",{}).get("received_bytes_per_s",""))')
        fi
      done
    fi
    if wanted_wss wss-fanout-half && [ -n "$wss_max_bps" ]; then
      half=$(python3 -c "print(round($wss_max_bps / 2 / ($subs * 65536), 1))")
      count=$(python3 -c "print(max(10, round($half * $wss_fan_secs)))")
      for s in $(rotate "$run" "${wss_ws_servers[@]}"); do
        run_load wss-fanout-half "$s" "$run" fanout --subscribers "$subs" --storage "$media" \
          --stream "live/wss-half-$s-$run" --size 65536 --rate "$half" --count "$count" --duration 60
      done
    fi
    for w in wss-connect wss-connect-resume; do
      wanted_wss "$w" || continue
      resume=(); [ "$w" = wss-connect-resume ] && resume=(--tls-resume)
      tls_args=(--tls --ca "$work/tls/ca.pem" --servername localhost "${resume[@]}")
      for s in $(rotate "$run" "${wss_ws_servers[@]}"); do
        run_load "$w" "$s" "$run" connect --count "$wss_connect_n" --concurrency 64 --bad-share 0.1
      done
      tls_args=(--tls --ca "$work/tls/ca.pem" --servername localhost)
    done
    tls_args=()
    stop_all
  fi
  if wanted iperf3; then
    for p in 1 4; do
      iperf3 -s -B 127.0.0.1 -p 15201 -1 >/dev/null 2>&1 &
      sleep 0.3
      if r=$(iperf3 -c 127.0.0.1 -p 15201 -t "$iperf_t" -P "$p" -J 2>/dev/null); then
        bps=$(echo "$r" | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"])')
        printf '{"workload":"iperf3-P%s","server":"iperf3","run":%s,"args":"-c 127.0.0.1 -t %s -P %s","report":{"received_bytes_per_s":%s}}\n' \
          "$p" "$run" "$iperf_t" "$p" "$(python3 -c "print($bps/8)")" >>"$raw"
      fi
    done
  fi
  if wanted loopback; then
    # The kernel's own cost per GB of send(2) through one loopback connection: the floor
    # under the CPU-s/GB of every server above that copies with send/writev.
    python3 bench/loopback_copy.py --size 1048576 --total-mb "$loop_mb" --run "$run" >>"$raw" \
      || log "loopback_copy.py failed"
  fi
done
stop_all

# TCP's congestion control is part of the machine: with BBR and no fq qdisc every server's
# loopback figures are bimodal (tuning.md, "TCP congestion control").
machine="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, Linux $(uname -r), TCP $(cat /proc/sys/net/ipv4/tcp_congestion_control 2>/dev/null || echo unknown)"
wsload_v=""
client_wanted wsload && wsload_v=", wsload: ws $(node -p 'require("./bench/wsload/node_modules/ws/package.json").version' 2>/dev/null || echo '?')"
versions="mediarelay $(git describe --always --dirty 2>/dev/null || echo '?'), nginx $(nginx -v 2>&1 | cut -d/ -f2), node $(node --version), iperf3 $(iperf3 --version | head -1 | awk '{print $2}'), $(openssl version | awk '{print $1, $2}') (nginx)$wsload_v"
python3 bench/summarize.py "$raw" "$md" --machine "$machine" --versions "$versions" --runs "$runs" --quick "$quick"
log "wrote $md (raw reports: $raw)"
failed=$(grep -c '"error":true' "$raw" || true)
if [ "$failed" -gt 0 ]; then
  log "$failed load runs failed (see above)"
  [ "$quick" = 1 ] && exit 1
fi
