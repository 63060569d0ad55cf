#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests, then the protocol tests with
# Python's `websockets` client against the built binary. Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt

cargo build --locked
cargo test --locked --all-targets
# The epoll fallback driver runs the connection and fan-out tests too.
MEDIARELAY_DRIVER=epoll cargo test --locked --test live --test requests
MEDIARELAY_BIN="$PWD/target/debug/mediarelay" python3 -m pytest -q tests/python
