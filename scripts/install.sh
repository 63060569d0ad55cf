#!/usr/bin/env bash
# Build and install mediarelay as a systemd service on this host (run as root).
#   scripts/install.sh            # build, install, enable and start
#   DESTDIR=/tmp/stage scripts/install.sh --no-start   # stage files only
set -euo pipefail
cd "$(dirname "$0")/.."
start=1
[ "${1:-}" = "--no-start" ] && start=0
dest=${DESTDIR:-}

cargo build --release --locked
install -D -m 0755 target/release/mediarelay "$dest/usr/local/bin/mediarelay"
install -D -m 0644 scripts/systemd/mediarelay.service "$dest/etc/systemd/system/mediarelay.service"
install -D -m 0644 scripts/systemd/99-mediarelay.conf "$dest/etc/sysctl.d/99-mediarelay.conf"
install -D -m 0644 README.md "$dest/usr/local/share/doc/mediarelay/README.md"
install -D -m 0644 tuning.md "$dest/usr/local/share/doc/mediarelay/tuning.md"
if [ ! -e "$dest/etc/mediarelay/mediarelay.toml" ]; then
  install -D -m 0644 scripts/mediarelay.example.toml "$dest/etc/mediarelay/mediarelay.toml"
  # Paths that make sense for the service: state under /var/lib/mediarelay.
  sed -i \
    -e 's|^url = "./media" |url = "/var/lib/mediarelay/media" |' \
    -e 's|^url = "./tickets.json" |url = "/var/lib/mediarelay/tickets.json" |' \
    -e 's|^snapshot_file = "./tickets.snapshot.json"|snapshot_file = "/var/lib/mediarelay/tickets.snapshot.json"|' \
    "$dest/etc/mediarelay/mediarelay.toml"
fi
[ -n "$dest" ] && exit 0

id mediarelay >/dev/null 2>&1 || useradd --system --home-dir /var/lib/mediarelay --shell /usr/sbin/nologin mediarelay
install -d -o mediarelay -g mediarelay /var/lib/mediarelay /var/lib/mediarelay/media
sysctl --system >/dev/null || echo "warning: sysctl --system failed (containers may refuse some keys)" >&2
systemctl daemon-reload
if [ "$start" = 1 ]; then
  systemctl enable --now mediarelay
  systemctl --no-pager status mediarelay | head -5
fi
