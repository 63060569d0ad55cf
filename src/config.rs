//! Settings: one struct per subsystem, every default in one place, and the layering
//! file < `MEDIARELAY_*` environment < command-line flags.
//!
//! Errors name the setting that is wrong (`storage.poll_interval: ...`) so `serve` can print
//! one line and exit with status 2.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{de, Deserialize, Deserializer};

/// A configuration error, already phrased for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Which io driver each worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DriverChoice {
    /// io_uring when the kernel allows it, else epoll.
    Auto,
    /// io_uring or fail.
    Uring,
    /// epoll.
    Epoll,
}

/// How payloads leave on plain-text connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SendPath {
    /// `sendfile` from the payload's file (the object's own file, or a sealed memfd), no
    /// copy on the sending side; small payloads and TLS use `writev`.
    Sendfile,
    /// `writev` from memory for everything: one copy of each payload per viewer.
    Writev,
}

/// `[server]`: listeners and the worker threads.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Public listener (WebSocket, health, ingest, player); TLS when `[tls]` has a
    /// certificate.
    pub listen: SocketAddr,
    /// A second public listener in plain text beside a TLS `listen` (optional).
    pub listen_plain: Option<SocketAddr>,
    /// Admin listener (metrics, health).
    pub admin: SocketAddr,
    /// Worker threads; 0 means one per CPU.
    pub workers: usize,
    /// io driver.
    pub driver: DriverChoice,
    /// How payloads leave on plain-text connections.
    pub send_path: SendPath,
    /// Time a client has to send a complete request head.
    #[serde(deserialize_with = "duration")]
    pub handshake_timeout: Duration,
    /// Longest a graceful drain may take.
    #[serde(deserialize_with = "duration")]
    pub drain_timeout: Duration,
    /// listen(2) backlog of each listener.
    pub backlog: u32,
    /// Most WebSocket connections the relay holds; the next upgrade gets 503 `overloaded`.
    /// 0: the process's open-file limit less 256.
    pub max_connections: usize,
    /// A connection that has sent nothing for this long is pinged (at most half of
    /// `idle_timeout`: see [`ServerConfig::ping_after`]).
    #[serde(deserialize_with = "duration")]
    pub ping_interval: Duration,
    /// A connection that has sent nothing (not even a pong) for this long is closed with
    /// 4402 (`idle_timeout`).
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
}

impl ServerConfig {
    /// How long a connection stays silent before it is pinged: `ping_interval`, but at most
    /// half of `idle_timeout`, so that a client that answers pings is never closed as idle
    /// (setting only `idle_timeout` below the default ping interval is valid).
    pub fn ping_after(&self) -> Duration {
        self.ping_interval.min(self.idle_timeout / 2)
    }
}

/// `[storage]`: the origin, discovery and the segment cache.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// A local directory (`file://DIR` is accepted too), or `gs://BUCKET[/PREFIX]`.
    pub url: String,
    /// How often each live stream is listed for new segments.
    #[serde(deserialize_with = "duration")]
    pub poll_interval: Duration,
    /// Cloud Storage notifications through Pub/Sub: `pubsub://PROJECT/topics/TOPIC` (the
    /// relay makes its own subscription) or `pubsub://PROJECT/subscriptions/NAME`.
    pub notifications: Option<String>,
    /// Where listing is billed (Cloud Storage), how often a followed stream is listed in
    /// full; in between, discovery reads the predicted next segment.
    #[serde(deserialize_with = "duration")]
    pub list_interval: Duration,
    /// Byte budget of the segment cache.
    #[serde(deserialize_with = "bytesize")]
    pub cache_size: u64,
    /// Largest object the relay will fetch and send.
    #[serde(deserialize_with = "bytesize")]
    pub max_object_size: u64,
    /// How long a live stream without subscribers keeps being polled.
    #[serde(deserialize_with = "duration")]
    pub stream_linger: Duration,
    /// Most live streams the relay follows at once; a subscription that would add one more
    /// gets `unavailable`.
    pub max_streams: usize,
    /// GCS: longest time one object fetch or listing may take, retries included.
    #[serde(deserialize_with = "duration")]
    pub request_deadline: Duration,
    /// GCS: longest wait for one attempt (a stalled response is retried after it).
    #[serde(deserialize_with = "duration")]
    pub attempt_timeout: Duration,
    /// GCS: most requests in flight at once (and idle keep-alive connections kept).
    pub max_inflight: usize,
    /// GCS: threads of the fetch runtime.
    pub fetch_threads: usize,
    /// GCS: objects per listing page.
    pub list_page_size: u32,
    /// GCS: an ingested body larger than this is uploaded in a resumable session, in pieces
    /// of this size (a multiple of 256 KiB), each retried on its own.
    #[serde(deserialize_with = "bytesize")]
    pub upload_chunk: u64,
}

/// `[tickets]`: the ticket store and the auth-failure limiter.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TicketsConfig {
    /// A JSON ticket file (`file://PATH` is accepted too), or
    /// `firestore://PROJECT[/DATABASE]/COLLECTION`.
    pub url: String,
    /// How often the ticket file is checked for changes.
    #[serde(deserialize_with = "duration")]
    pub reload_interval: Duration,
    /// Failed ticket checks allowed from one IP per `auth_failure_window` before 429.
    pub auth_failure_limit: u32,
    /// Window of the failure limiter.
    #[serde(deserialize_with = "duration")]
    pub auth_failure_window: Duration,
    /// Firestore: incremental sync period.
    #[serde(deserialize_with = "duration")]
    pub sync_interval: Duration,
    /// How long before a connection's ticket expires it is sent `expiring` (once per
    /// ticket); `0s`: never.
    #[serde(deserialize_with = "duration")]
    pub expiring_notice: Duration,
    /// Firestore: full reload period.
    #[serde(deserialize_with = "duration")]
    pub full_resync_interval: Duration,
    /// Firestore: how often the collection's count is compared with the snapshot's, to
    /// notice deleted documents (a reload follows a difference); `0s`: never.
    #[serde(deserialize_with = "duration")]
    pub deletion_check_interval: Duration,
    /// Firestore: where the snapshot is persisted for warm starts.
    pub snapshot_file: PathBuf,
    /// Firestore: documents per listing page.
    pub page_size: u32,
    /// How long an upgrade waits for a point lookup of an unknown ticket (Firestore, or the
    /// ticket file re-read).
    #[serde(deserialize_with = "duration")]
    pub lookup_timeout: Duration,
    /// Firestore: how long a ticket found missing is not looked up again.
    #[serde(deserialize_with = "duration")]
    pub lookup_negative_ttl: Duration,
    /// Firestore: point lookups per second, for the whole relay.
    pub lookup_rate: u32,
}

/// `[connection]`: per-connection limits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionConfig {
    /// Bound of each connection's send queue.
    #[serde(deserialize_with = "bytesize")]
    pub send_queue: u64,
    /// A live subscriber whose oldest queued segment has waited longer than this when a
    /// new one arrives skips to the newest (0: only the byte bound applies).
    #[serde(deserialize_with = "duration")]
    pub max_live_lag: Duration,
    /// Most bytes a subscribing connection's kernel socket buffer holds not yet sent
    /// (`TCP_NOTSENT_LOWAT`, set at its first subscription): beyond it the relay's own
    /// queue, and its lag bound, keep the backlog. A connection that only `get`s keeps the
    /// kernel's default. Default 64 KiB; 0: the kernel's default (unbounded up to the send
    /// buffer).
    #[serde(deserialize_with = "bytesize")]
    pub socket_unsent: u64,
    /// How long a connection may stay over its send-queue limit before 4408.
    #[serde(deserialize_with = "duration")]
    pub stall_timeout: Duration,
    /// Largest client message (text frame or reassembled message).
    #[serde(deserialize_with = "bytesize")]
    pub max_message: u64,
    /// Streams one connection may follow.
    pub max_subscriptions: usize,
    /// `get`s one connection may have waiting before `rate_limited`.
    pub max_pending_gets: usize,
    /// Distinct streams one connection may subscribe to within a minute; more get
    /// `rate_limited` (each new stream name starts discovery on the relay).
    pub max_streams_per_minute: usize,
    /// Bytes all connections' send queues may hold together (the relay's memory for slow
    /// viewers); above it the largest queues lose their oldest live segments first
    /// (`skipped`). `get` replies are never dropped.
    #[serde(deserialize_with = "bytesize")]
    pub queue_budget: u64,
    /// Requests one connection may send per second; more get `rate_limited`, and a
    /// connection that keeps at it (three times as many refused within a second) is closed
    /// with 1008. High enough for load generators and prefetching players; it bounds what
    /// one flooding connection costs.
    pub max_requests_per_sec: u32,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug`, `trace` or a tracing filter.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

/// `[tls]`: the public listener's certificate chain and private key (PEM files). Both or
/// neither; re-read on SIGHUP.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsConfig {
    /// Whether the public listener speaks TLS.
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }
}

/// Everything `serve` needs.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub tls: TlsConfig,
    pub storage: StorageConfig,
    pub tickets: TicketsConfig,
    pub connection: ConnectionConfig,
    pub log: LogConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".parse().expect("literal address"),
            listen_plain: None,
            admin: "127.0.0.1:9090".parse().expect("literal address"),
            workers: 0,
            driver: DriverChoice::Auto,
            send_path: SendPath::Sendfile,
            handshake_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            backlog: 4096,
            max_connections: 0,
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            url: "./media".into(),
            poll_interval: Duration::from_millis(200),
            list_interval: Duration::from_secs(10),
            notifications: None,
            cache_size: 512 << 20,
            max_object_size: 64 << 20,
            stream_linger: Duration::from_secs(30),
            max_streams: 10_000,
            request_deadline: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(3),
            max_inflight: 64,
            fetch_threads: 1,
            list_page_size: 1000,
            upload_chunk: 8 << 20,
        }
    }
}

impl Default for TicketsConfig {
    fn default() -> Self {
        Self {
            url: "./tickets.json".into(),
            reload_interval: Duration::from_millis(250),
            auth_failure_limit: 20,
            auth_failure_window: Duration::from_secs(60),
            sync_interval: Duration::from_secs(1),
            full_resync_interval: Duration::from_secs(600),
            deletion_check_interval: Duration::from_secs(10),
            expiring_notice: Duration::from_secs(60),
            snapshot_file: PathBuf::from("./tickets.snapshot.json"),
            page_size: 300,
            lookup_timeout: Duration::from_secs(2),
            lookup_negative_ttl: Duration::from_secs(5),
            lookup_rate: 50,
        }
    }
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            send_queue: 8 << 20,
            max_live_lag: Duration::from_secs(1),
            socket_unsent: 64 << 10,
            stall_timeout: Duration::from_secs(10),
            max_message: 4096,
            max_subscriptions: 16,
            max_pending_gets: 64,
            max_streams_per_minute: 32,
            max_requests_per_sec: 1000,
            queue_budget: 1 << 30,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// Environment variables and the setting each one sets (`section.key`).
pub const ENV_VARS: &[(&str, &str)] = &[
    ("MEDIARELAY_LISTEN", "server.listen"),
    ("MEDIARELAY_LISTEN_PLAIN", "server.listen_plain"),
    ("MEDIARELAY_TLS_CERT", "tls.cert"),
    ("MEDIARELAY_TLS_KEY", "tls.key"),
    ("MEDIARELAY_ADMIN", "server.admin"),
    ("MEDIARELAY_WORKERS", "server.workers"),
    ("MEDIARELAY_DRIVER", "server.driver"),
    ("MEDIARELAY_SEND_PATH", "server.send_path"),
    ("MEDIARELAY_HANDSHAKE_TIMEOUT", "server.handshake_timeout"),
    ("MEDIARELAY_MAX_CONNECTIONS", "server.max_connections"),
    ("MEDIARELAY_PING_INTERVAL", "server.ping_interval"),
    ("MEDIARELAY_IDLE_TIMEOUT", "server.idle_timeout"),
    (
        "MEDIARELAY_MAX_REQUESTS_PER_SEC",
        "connection.max_requests_per_sec",
    ),
    ("MEDIARELAY_DRAIN_TIMEOUT", "server.drain_timeout"),
    ("MEDIARELAY_STORAGE", "storage.url"),
    ("MEDIARELAY_POLL_INTERVAL", "storage.poll_interval"),
    ("MEDIARELAY_LIST_INTERVAL", "storage.list_interval"),
    ("MEDIARELAY_NOTIFICATIONS", "storage.notifications"),
    ("MEDIARELAY_CACHE_SIZE", "storage.cache_size"),
    ("MEDIARELAY_MAX_OBJECT_SIZE", "storage.max_object_size"),
    ("MEDIARELAY_REQUEST_DEADLINE", "storage.request_deadline"),
    ("MEDIARELAY_ATTEMPT_TIMEOUT", "storage.attempt_timeout"),
    ("MEDIARELAY_MAX_INFLIGHT", "storage.max_inflight"),
    ("MEDIARELAY_FETCH_THREADS", "storage.fetch_threads"),
    ("MEDIARELAY_LIST_PAGE_SIZE", "storage.list_page_size"),
    ("MEDIARELAY_UPLOAD_CHUNK", "storage.upload_chunk"),
    ("MEDIARELAY_TICKETS", "tickets.url"),
    (
        "MEDIARELAY_AUTH_FAILURE_LIMIT",
        "tickets.auth_failure_limit",
    ),
    ("MEDIARELAY_SYNC_INTERVAL", "tickets.sync_interval"),
    (
        "MEDIARELAY_FULL_RESYNC_INTERVAL",
        "tickets.full_resync_interval",
    ),
    ("MEDIARELAY_EXPIRING_NOTICE", "tickets.expiring_notice"),
    (
        "MEDIARELAY_DELETION_CHECK_INTERVAL",
        "tickets.deletion_check_interval",
    ),
    ("MEDIARELAY_TICKET_SNAPSHOT", "tickets.snapshot_file"),
    ("MEDIARELAY_LOOKUP_RATE", "tickets.lookup_rate"),
    ("MEDIARELAY_LOOKUP_TIMEOUT", "tickets.lookup_timeout"),
    ("MEDIARELAY_MAX_PENDING_GETS", "connection.max_pending_gets"),
    ("MEDIARELAY_SEND_QUEUE", "connection.send_queue"),
    ("MEDIARELAY_MAX_LIVE_LAG", "connection.max_live_lag"),
    ("MEDIARELAY_SOCKET_UNSENT", "connection.socket_unsent"),
    ("MEDIARELAY_QUEUE_BUDGET", "connection.queue_budget"),
    ("MEDIARELAY_STALL_TIMEOUT", "connection.stall_timeout"),
    ("MEDIARELAY_MAX_MESSAGE", "connection.max_message"),
    (
        "MEDIARELAY_MAX_SUBSCRIPTIONS",
        "connection.max_subscriptions",
    ),
    (
        "MEDIARELAY_MAX_STREAMS_PER_MINUTE",
        "connection.max_streams_per_minute",
    ),
    ("MEDIARELAY_MAX_STREAMS", "storage.max_streams"),
    ("MEDIARELAY_LOG_LEVEL", "log.level"),
    ("MEDIARELAY_LOG_FORMAT", "log.format"),
];

/// Settings whose TOML type is an integer (environment values are strings otherwise).
const INTEGER_SETTINGS: &[&str] = &[
    "server.workers",
    "server.backlog",
    "server.max_connections",
    "connection.max_requests_per_sec",
    "connection.max_subscriptions",
    "connection.max_pending_gets",
    "connection.max_streams_per_minute",
    "storage.max_streams",
    "tickets.auth_failure_limit",
    "tickets.page_size",
    "tickets.lookup_rate",
    "storage.max_inflight",
    "storage.fetch_threads",
    "storage.list_page_size",
];

impl Config {
    /// Build the configuration: `file` (if any), then `env` (name, value) pairs, then
    /// `overrides` (setting, value) from flags; later layers win.
    /// A configuration from the text of a TOML file alone (defaults for the rest).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let table = text
            .parse::<toml::Table>()
            .map_err(|e| ConfigError(format!("config: {}", one_line(&e.to_string()))))?;
        let config: Config = Config::deserialize(toml::Value::Table(table))
            .map_err(|e| ConfigError(one_line(&e.to_string())))?;
        config.validate()?;
        Ok(config)
    }

    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(&str, String)],
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?;
                text.parse::<toml::Table>().map_err(|e| {
                    ConfigError(format!(
                        "config file {}: {}",
                        path.display(),
                        one_line(&e.to_string())
                    ))
                })?
            }
            None => toml::Table::new(),
        };
        for (name, value) in env {
            if let Some((_, setting)) = ENV_VARS.iter().find(|(n, _)| *n == name) {
                set(&mut table, setting, &value)?;
            }
        }
        for (setting, value) in overrides {
            set(&mut table, setting, value)?;
        }
        let config: Config = Config::deserialize(toml::Value::Table(table))
            .map_err(|e| ConfigError(one_line(&e.to_string())))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |s: &str, why: &str| Err(ConfigError(format!("{s}: {why}")));
        match (&self.tls.cert, &self.tls.key) {
            (Some(_), None) => return bad("tls.key", "needed with tls.cert"),
            (None, Some(_)) => return bad("tls.cert", "needed with tls.key"),
            _ => {}
        }
        if let Some(n) = &self.storage.notifications {
            if !self.storage.url.starts_with("gs://") {
                return bad("storage.notifications", "needs a gs:// storage.url");
            }
            if !n.starts_with("pubsub://")
                || n.trim_start_matches("pubsub://").split('/').count() != 3
            {
                return bad(
                    "storage.notifications",
                    "expected pubsub://PROJECT/topics/TOPIC or pubsub://PROJECT/subscriptions/NAME",
                );
            }
        }
        if self.server.listen_plain.is_some() && !self.tls.enabled() {
            return bad(
                "server.listen_plain",
                "a plain listener beside a TLS one: needs tls.cert and tls.key",
            );
        }
        if self.connection.max_message < 125 || self.connection.max_message > 1 << 20 {
            return bad("connection.max_message", "must be between 125 B and 1 MiB");
        }
        if self.server.ping_interval < Duration::from_millis(100) {
            return bad("server.ping_interval", "must be at least 100ms");
        }
        if self.server.idle_timeout < Duration::from_millis(500) {
            // The keepalive sweep runs every 250 ms: a shorter timeout could close a
            // connection that answers every ping.
            return bad("server.idle_timeout", "must be at least 500ms");
        }
        if self.connection.max_requests_per_sec == 0 {
            return bad("connection.max_requests_per_sec", "must be at least 1");
        }
        if self.connection.send_queue < 1 << 10 {
            return bad("connection.send_queue", "must be at least 1 KiB");
        }
        if self.storage.poll_interval < Duration::from_millis(10) {
            return bad("storage.poll_interval", "must be at least 10ms");
        }
        if self.storage.max_object_size == 0 || self.storage.max_object_size > 4 << 30 {
            return bad("storage.max_object_size", "must be between 1 B and 4 GiB");
        }
        if self.storage.max_inflight == 0 || self.storage.fetch_threads == 0 {
            return bad(
                "storage.max_inflight",
                "max_inflight and fetch_threads must be at least 1",
            );
        }
        if !(1..=1000).contains(&self.tickets.page_size) {
            return bad("tickets.page_size", "must be between 1 and 1000");
        }
        if self.tickets.sync_interval < Duration::from_millis(100) {
            return bad("tickets.sync_interval", "must be at least 100ms");
        }
        if !(1..=1000).contains(&self.storage.list_page_size) {
            return bad("storage.list_page_size", "must be between 1 and 1000");
        }
        if self.connection.socket_unsent > 64 << 20 {
            return bad("connection.socket_unsent", "must be at most 64 MiB");
        }
        let chunk = self.storage.upload_chunk;
        if chunk == 0 || chunk % (256 << 10) != 0 || chunk > 1 << 30 {
            return bad(
                "storage.upload_chunk",
                "must be a multiple of 256 KiB, at most 1 GiB",
            );
        }
        if self.storage.attempt_timeout.is_zero() || self.storage.request_deadline.is_zero() {
            return bad("storage.request_deadline", "deadlines must be above zero");
        }
        if self.server.workers > 1024 {
            return bad("server.workers", "at most 1024");
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return bad("log.format", "must be `text` or `json`");
        }
        Ok(())
    }

    /// Worker count with 0 resolved to the number of CPUs.
    pub fn worker_count(&self) -> usize {
        if self.server.workers > 0 {
            self.server.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// The storage root when storage is a local directory.
    pub fn storage_dir(&self) -> Option<PathBuf> {
        let url = &self.storage.url;
        if url.contains("://") {
            url.strip_prefix("file://").map(PathBuf::from)
        } else {
            Some(PathBuf::from(url))
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Put `value` at `setting` (`section.key`) in `table`, typed as the setting expects.
fn set(table: &mut toml::Table, setting: &str, value: &str) -> Result<(), ConfigError> {
    let (section, key) = setting
        .split_once('.')
        .ok_or_else(|| ConfigError(format!("{setting}: not a setting")))?;
    let value = if INTEGER_SETTINGS.contains(&setting) {
        let n: i64 = value
            .trim()
            .parse()
            .map_err(|_| ConfigError(format!("{setting}: `{value}` is not a whole number")))?;
        toml::Value::Integer(n)
    } else {
        toml::Value::String(value.to_string())
    };
    let sect = table
        .entry(section)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    match sect {
        toml::Value::Table(t) => {
            t.insert(key.to_string(), value);
            Ok(())
        }
        _ => Err(ConfigError(format!("{section}: must be a table"))),
    }
}

/// A setting's value that does not parse (the message names the value and what was wanted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadValue(pub String);

/// Parse `30s`, `15m`, `1h`, `7d`, `250ms` (and combinations such as `1h30m`).
pub fn parse_duration(s: &str) -> Result<Duration, BadValue> {
    humantime::parse_duration(s.trim())
        .map_err(|e| BadValue(format!("`{s}` is not a duration ({e})")))
}

/// Parse `512MiB`, `8 MiB`, `64KiB`, `4096`, `1GB` (decimal units are powers of 1000).
pub fn parse_bytes(s: &str) -> Result<u64, BadValue> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| BadValue(format!("`{s}` is not a size (try `8MiB`)")))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => {
            return Err(BadValue(format!(
                "`{s}` has an unknown unit (B, KiB, MiB, GiB, kB, MB, GB)"
            )))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| BadValue(format!("`{s}` is too large")))
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(de::Error::custom)
}

fn bytesize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        N(u64),
        S(String),
    }
    match Size::deserialize(d)? {
        Size::N(n) => Ok(n),
        Size::S(s) => parse_bytes(&s).map_err(de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_protocol() {
        let c = Config::load(None, Vec::new(), &[]).unwrap();
        assert_eq!(c.server.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.server.admin.to_string(), "127.0.0.1:9090");
        assert_eq!(c.storage.url, "./media");
        assert_eq!(c.tickets.url, "./tickets.json");
        assert_eq!(c.storage.poll_interval, Duration::from_millis(200));
        assert_eq!(c.storage.cache_size, 512 << 20);
        assert_eq!(c.connection.send_queue, 8 << 20);
        assert_eq!(c.connection.max_message, 4096);
        assert_eq!(c.connection.max_subscriptions, 16);
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[server]\nlisten = \"127.0.0.1:1\"\nworkers = 3\n[storage]\npoll_interval = \"1s\"\n",
        )
        .unwrap();
        let env = vec![
            ("MEDIARELAY_LISTEN".to_string(), "127.0.0.1:2".to_string()),
            ("MEDIARELAY_WORKERS".to_string(), "5".to_string()),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let c = Config::load(
            Some(&file),
            env,
            &[("server.listen", "127.0.0.1:3".to_string())],
        )
        .unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:3");
        assert_eq!(c.server.workers, 5);
        assert_eq!(c.storage.poll_interval, Duration::from_secs(1));
    }

    #[test]
    fn every_v1_1_variable_is_read() {
        let env = vec![
            ("MEDIARELAY_MAX_PENDING_GETS".to_string(), "3".to_string()),
            ("MEDIARELAY_LOOKUP_TIMEOUT".to_string(), "750ms".to_string()),
        ];
        let c = Config::load(None, env, &[]).unwrap();
        assert_eq!(c.connection.max_pending_gets, 3);
        assert_eq!(c.tickets.lookup_timeout, Duration::from_millis(750));
    }

    #[test]
    fn each_contract_setting_alone_starts_a_relay() {
        // Test suites set one of PROTOCOL.md's settings at a time, to small values.
        for (name, value) in [
            ("MEDIARELAY_IDLE_TIMEOUT", "2s"),
            ("MEDIARELAY_PING_INTERVAL", "5m"),
            ("MEDIARELAY_SEND_QUEUE", "4096"),
            ("MEDIARELAY_MAX_OBJECT_SIZE", "4096"),
            ("MEDIARELAY_MAX_CONNECTIONS", "2"),
            ("MEDIARELAY_EXPIRING_NOTICE", "1s"),
            ("MEDIARELAY_MAX_PENDING_GETS", "1"),
            ("MEDIARELAY_POLL_INTERVAL", "50ms"),
            ("MEDIARELAY_LOOKUP_TIMEOUT", "100ms"),
        ] {
            let c = Config::load(None, vec![(name.into(), value.into())], &[]);
            assert!(c.is_ok(), "{name}={value}: {c:?}");
        }
        // A ping interval not below the idle timeout pings at half of it, so a client that
        // answers pings stays.
        let c = Config::load(
            None,
            vec![("MEDIARELAY_IDLE_TIMEOUT".into(), "2s".into())],
            &[],
        )
        .unwrap();
        assert_eq!(c.server.ping_after(), Duration::from_secs(1));
        assert_eq!(
            Config::default().server.ping_after(),
            Duration::from_secs(30)
        );
        // Under two sweeps (250 ms each) a connection answering pings could be closed.
        let e = Config::load(
            None,
            vec![("MEDIARELAY_IDLE_TIMEOUT".into(), "400ms".into())],
            &[],
        )
        .unwrap_err();
        assert!(e.0.contains("server.idle_timeout"), "{e}");
    }

    #[test]
    fn errors_name_the_setting() {
        let e = Config::load(
            None,
            Vec::new(),
            &[("storage.poll_interval", "soon".to_string())],
        )
        .unwrap_err();
        assert!(e.0.contains("poll_interval"), "{e}");
        let e = Config::load(None, Vec::new(), &[("server.workers", "x".to_string())]).unwrap_err();
        assert!(e.0.contains("server.workers"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[server]\nlisen = \"x\"\n").unwrap();
        let e = Config::load(Some(&file), Vec::new(), &[]).unwrap_err();
        assert!(e.0.contains("lisen"), "{e}");
        assert!(!e.0.contains('\n'));
        for bad in ["100KiB", "0", "300KiB", "2GiB"] {
            let e = Config::load(
                None,
                vec![("MEDIARELAY_UPLOAD_CHUNK".into(), bad.into())],
                &[],
            )
            .unwrap_err();
            assert!(e.0.contains("storage.upload_chunk"), "{bad}: {e}");
        }
        let c = Config::load(
            None,
            vec![("MEDIARELAY_UPLOAD_CHUNK".into(), "512KiB".into())],
            &[],
        )
        .unwrap();
        assert_eq!(c.storage.upload_chunk, 512 << 10);
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_bytes("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_bytes("64 KiB").unwrap(), 64 << 10);
        assert_eq!(parse_bytes("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("lots").is_err());
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    }

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/mediarelay.example.toml");
        Config::load(Some(&path), Vec::new(), &[]).unwrap();
    }
}
