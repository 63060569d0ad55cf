//! The command line (clap): `serve`, `ticket issue|revoke|list` ([`commands`]), and the
//! `demo` and `watch` tools ([`demo`]). The top of the dependency graph: it uses the
//! control plane and the ticket stores; nothing uses it.

pub mod commands;
pub mod demo;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// mediarelay: relays media segments from object storage to many WebSocket clients.
#[derive(Parser, Debug)]
#[command(name = "mediarelay", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the relay.
    #[command(
        after_help = "Every setting can also come from a TOML file (--config; all of them are in scripts/mediarelay.example.toml) or a MEDIARELAY_* environment variable (MEDIARELAY_LISTEN, MEDIARELAY_TLS_CERT, MEDIARELAY_POLL_INTERVAL, MEDIARELAY_MAX_CONNECTIONS, ...: the setting's name in capitals). Flags win over the environment, which wins over the file. SIGHUP re-reads them (and the TLS certificate); SIGTERM drains."
    )]
    Serve(ServeArgs),
    /// Issue, revoke and list tickets.
    #[command(subcommand)]
    Ticket(TicketCommand),
    /// Run the relay on its defaults with a live stream (real video through ingest when
    /// ffmpeg is installed, synthetic segments otherwise) and a client watching it.
    Demo(DemoArgs),
    /// Connect to a relay, subscribe to a stream and print each segment as it arrives.
    Watch(WatchArgs),
    /// Run the relay's data plane as a WebSocket echo server (no tickets, no storage), for
    /// RFC 6455 conformance suites such as Autobahn's.
    Echo(EchoArgs),
}

/// `echo` flags.
#[derive(Args, Debug)]
pub struct EchoArgs {
    /// Address to listen on (any path upgrades).
    #[arg(long, default_value = "127.0.0.1:9001")]
    pub listen: std::net::SocketAddr,
    /// Largest message echoed (bytes, or with a unit: 16MiB).
    #[arg(long, default_value = "16MiB")]
    pub max_message: String,
}

/// `serve` flags; each overrides the config file and `MEDIARELAY_*` variables.
#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// TOML config file (see scripts/mediarelay.example.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Public listener [default: 0.0.0.0:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Admin listener (metrics) [default: 127.0.0.1:9090].
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,
    /// Certificate chain (PEM): the public listener speaks TLS (wss://, https://).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<String>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<String>,
    /// A plain-text public listener beside the TLS one.
    #[arg(long, value_name = "ADDR")]
    pub listen_plain: Option<String>,
    /// Storage: a local directory, or gs://BUCKET[/PREFIX] [default: ./media].
    #[arg(long, value_name = "DIR|URL")]
    pub storage: Option<String>,
    /// Cloud Storage notifications: pubsub://PROJECT/topics/TOPIC or
    /// pubsub://PROJECT/subscriptions/NAME (with a gs:// storage).
    #[arg(long, value_name = "URL")]
    pub notifications: Option<String>,
    /// Ticket store: a JSON file, or firestore://PROJECT[/DATABASE]/COLLECTION [default: ./tickets.json].
    #[arg(long, value_name = "FILE|URL")]
    pub tickets: Option<String>,
    /// Worker threads [default: number of CPUs].
    #[arg(long, value_name = "N")]
    pub workers: Option<String>,
    /// io driver: auto (io_uring, else epoll), uring or epoll [default: auto].
    #[arg(long, value_name = "auto|uring|epoll")]
    pub driver: Option<String>,
    /// Log level or tracing filter (error, warn, info, debug, trace) [default: info;
    /// RUST_LOG wins when set].
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum TicketCommand {
    /// Issue a ticket; prints the ticket (and nothing else) on stdout.
    Issue {
        #[arg(long, value_name = "FILE|URL")]
        tickets: String,
        /// The user the ticket is for.
        #[arg(long)]
        uid: String,
        /// Stream patterns: paths (live/cam1), prefixes (vod/*) or *.
        #[arg(long, value_delimiter = ',', required = true)]
        streams: Vec<String>,
        /// Lifetime (30s, 15m, 1h, 7d).
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Most concurrent connections with this ticket on one relay.
        #[arg(long, value_name = "N")]
        max_connections: Option<u32>,
        /// Key patterns the ticket may publish (ingest), same rules as --streams.
        #[arg(long, value_delimiter = ',', value_name = "P1[,P2...]")]
        publish: Vec<String>,
    },
    /// Revoke a ticket, given the ticket or its id (SHA-256 hex).
    Revoke {
        #[arg(long, value_name = "FILE|URL")]
        tickets: String,
        /// The ticket string (tickets may start with `-`).
        #[arg(
            required_unless_present = "id",
            conflicts_with = "id",
            allow_hyphen_values = true
        )]
        ticket: Option<String>,
        /// The ticket's id.
        #[arg(long, value_name = "SHA256HEX")]
        id: Option<String>,
    },
    /// List tickets (ids, never the tickets themselves).
    List {
        #[arg(long, value_name = "FILE|URL")]
        tickets: String,
    },
}

/// `demo` flags.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Public listener.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Admin listener.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin: String,
    /// Storage directory the demo stream is written to.
    #[arg(long, default_value = "./media")]
    pub storage: PathBuf,
    /// Ticket file.
    #[arg(long, default_value = "./tickets.json")]
    pub tickets: PathBuf,
    /// Stream name.
    #[arg(long, default_value = "live/demo")]
    pub stream: String,
    /// Time between segments (synthetic stream).
    #[arg(long, default_value = "1s")]
    pub interval: String,
    /// Segment size (synthetic stream).
    #[arg(long, default_value = "64KiB")]
    pub size: String,
    /// Stop after this many segments (0: run until interrupted).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    /// Write synthetic segments (random bytes) even when ffmpeg is installed; without it the
    /// demo pushes real video (an H.264 test pattern from ffmpeg) through ingest.
    #[arg(long)]
    pub synthetic: bool,
}

/// `watch` flags.
#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Relay WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// Ticket (or set MEDIARELAY_TICKET).
    #[arg(
        long,
        env = "MEDIARELAY_TICKET",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub ticket: String,
    /// Stream to subscribe to.
    #[arg(long, default_value = "live/demo")]
    pub stream: String,
    /// Where to start: live, start or a sequence number.
    #[arg(long, default_value = "live")]
    pub from: String,
    /// Stop after this many segments (0: until interrupted).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    /// On `expiring`, run this shell command and send what it prints as the new ticket
    /// (`refresh`); without it the notice is only shown. Example: `cat ticket.txt`.
    #[arg(long, value_name = "COMMAND")]
    pub refresh_cmd: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_forms_parse() {
        let ok = |args: &[&str]| {
            Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        };
        ok(&["mediarelay", "serve"]);
        ok(&[
            "mediarelay",
            "serve",
            "--config",
            "c.toml",
            "--listen",
            "127.0.0.1:1",
            "--admin",
            "127.0.0.1:2",
            "--storage",
            "./m",
            "--tickets",
            "t.json",
            "--workers",
            "4",
            "--driver",
            "epoll",
        ]);
        ok(&[
            "mediarelay",
            "ticket",
            "issue",
            "--tickets",
            "t.json",
            "--uid",
            "u",
            "--streams",
            "live/cam1,vod/*",
            "--ttl",
            "7d",
            "--max-connections",
            "2",
        ]);
        // Tickets are base64url and may start with `-`.
        ok(&[
            "mediarelay",
            "ticket",
            "revoke",
            "--tickets",
            "t.json",
            "-Abc_9",
        ]);
        ok(&[
            "mediarelay",
            "ticket",
            "revoke",
            "--tickets",
            "t.json",
            "--id",
            "ab",
        ]);
        ok(&["mediarelay", "ticket", "list", "--tickets", "t.json"]);
        ok(&["mediarelay", "watch", "--ticket", "-x"]);
        assert!(Cli::try_parse_from(["mediarelay", "ticket", "revoke", "--tickets", "t"]).is_err());
    }
}
