//! SIGHUP: read the configuration again; apply what can change while running (log level,
//! connection limits, timeouts, the live poll interval), keep the running value of
//! everything else and say that it needs a restart. A configuration that does not load
//! leaves the running one untouched.

use super::logging::SetLogLevel;
use crate::config::{Config, ConfigError};
use crate::dataplane::Relay;

/// What SIGHUP does: read the configuration again, and apply a new log level.
pub struct Reloader {
    /// Reads the configuration as at start (file, environment, flags).
    pub read: Box<dyn Fn() -> Result<Config, ConfigError> + Send>,
    /// Applies a new `log.level`.
    pub set_log_level: SetLogLevel,
}

/// The outcome of comparing the running configuration with a new one.
#[derive(Debug, PartialEq)]
pub struct Diff {
    /// The configuration to run: the new one, with the running value of each setting that
    /// needs a restart.
    pub merged: Config,
    /// Settings that changed and apply now.
    pub applied: Vec<&'static str>,
    /// Settings that changed and need a restart (kept at their running value).
    pub needs_restart: Vec<&'static str>,
}

/// Compare `old` (running) with `new` (just read).
pub fn diff(old: &Config, new: &Config) -> Diff {
    let mut merged = new.clone();
    let mut applied: Vec<&'static str> = Vec::new();
    let mut restart: Vec<&'static str> = Vec::new();
    macro_rules! diff {
        ($($s:ident . $f:ident => $live:expr),* $(,)?) => {$(
            if old.$s.$f != new.$s.$f {
                let name = concat!(stringify!($s), ".", stringify!($f));
                if $live {
                    applied.push(name);
                } else {
                    restart.push(name);
                    merged.$s.$f = old.$s.$f.clone();
                }
            }
        )*};
    }
    diff!(
        server.listen => false, server.listen_plain => false, server.admin => false, server.workers => false,
        server.driver => false, server.send_path => false, server.handshake_timeout => true,
        server.drain_timeout => true, server.backlog => false,
        server.max_connections => true, server.ping_interval => true, server.idle_timeout => true,
        storage.url => false, storage.poll_interval => true, storage.list_interval => true,
        storage.notifications => false, storage.cache_size => false,
        storage.max_object_size => false, storage.stream_linger => false,
        storage.request_deadline => false, storage.attempt_timeout => false,
        storage.max_inflight => false, storage.fetch_threads => false,
        storage.list_page_size => false, storage.max_streams => true,
        storage.upload_chunk => false,
        tickets.url => false, tickets.reload_interval => false,
        tickets.auth_failure_limit => false, tickets.auth_failure_window => false,
        tickets.sync_interval => false, tickets.full_resync_interval => false,
        tickets.deletion_check_interval => false, tickets.expiring_notice => true,
        tickets.snapshot_file => false, tickets.page_size => false,
        tickets.lookup_timeout => true, tickets.lookup_negative_ttl => false,
        tickets.lookup_rate => false,
        connection.send_queue => true, connection.max_live_lag => true,
        connection.socket_unsent => true,
        connection.stall_timeout => true,
        connection.max_message => true, connection.max_subscriptions => true,
        connection.max_pending_gets => true, connection.max_streams_per_minute => true,
        connection.max_requests_per_sec => true, connection.queue_budget => true,
        log.level => true, log.format => false,
        tls.cert => true, tls.key => true,
    );
    Diff {
        merged,
        applied,
        needs_restart: restart,
    }
}

/// Reload the configuration into the running relay.
pub fn apply(relay: &Relay, reloader: &Reloader) {
    let new = match (reloader.read)() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("SIGHUP: configuration not reloaded, keeping the running one: {e}");
            return;
        }
    };
    let old = relay.config();
    let Diff {
        mut merged,
        mut applied,
        needs_restart,
    } = diff(&old, &new);
    // The certificate and key are read again on every SIGHUP (renewed files keep their
    // names). Whether the public listener speaks TLS is fixed at start.
    if merged.tls.enabled() != relay.has_tls() {
        tracing::error!(
            "SIGHUP: turning TLS on or off needs a restart; keeping the running listener"
        );
        merged.tls = old.tls.clone();
        applied.retain(|n| !n.starts_with("tls."));
    } else if let Err(e) = relay.reload_tls(&merged.tls) {
        tracing::error!("SIGHUP: TLS certificate not reloaded, keeping the running one: {e}");
        merged.tls = old.tls.clone();
        applied.retain(|n| !n.starts_with("tls."));
    } else if relay.has_tls() {
        tracing::info!("SIGHUP: TLS certificate and key reloaded for new connections");
    }
    if applied.contains(&"log.level") {
        if let Err(e) = (reloader.set_log_level)(&merged.log.level) {
            tracing::error!("SIGHUP: log.level `{}` not applied: {e}", merged.log.level);
            merged.log.level = old.log.level.clone();
            applied.retain(|n| *n != "log.level");
        }
    }
    relay.apply_config(merged);
    tracing::info!(
        applied = ?applied,
        needs_restart = ?needs_restart,
        "SIGHUP: configuration reloaded"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn live_settings_apply_and_others_wait_for_a_restart() {
        let old = Config::default();
        let mut new = old.clone();
        new.connection.max_subscriptions = 3;
        new.storage.poll_interval = Duration::from_millis(70);
        new.server.workers = 7;
        new.log.format = "json".into();
        let d = diff(&old, &new);
        assert_eq!(
            d.applied,
            ["storage.poll_interval", "connection.max_subscriptions"]
        );
        assert_eq!(d.needs_restart, ["server.workers", "log.format"]);
        assert_eq!(d.merged.connection.max_subscriptions, 3);
        assert_eq!(d.merged.server.workers, old.server.workers);
        assert_eq!(d.merged.log.format, old.log.format);
        assert_eq!(diff(&old, &old).applied, Vec::<&str>::new());
    }
}
