//! mediarelay-load: a load generator for mediarelay's wire contract (PROTOCOL.md), and for
//! the peer servers it is compared with in `bench/`.
//!
//! Thread per core, one monoio runtime each (io_uring, epoll fallback), many connections
//! per thread. Every scenario is bounded by `--duration` and/or `--count` and stops by
//! itself. With `--server-pid`, the server's own CPU seconds (utime + stime from /proc) and
//! resident memory are reported next to the client's figures, so a run on a machine shared
//! by client and server still says what the server paid.
//!
//! Modules: `wire` (upgrade, frames, the relay and socket.io dialects, HTTP responses),
//! `report` (/proc, progress line, table/JSON, hgrm files), `scenarios` (one file each).

mod report;
mod scenarios;
mod stream;
mod wire;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use report::Server;
use wire::{Proto, Target};

#[derive(Parser)]
#[command(
    name = "mediarelay-load",
    version,
    about = "Load generator for mediarelay (and any server speaking its wire contract)",
    args_override_self = true
)]
struct Cli {
    /// Server address (host:port of the public listener).
    #[arg(long, default_value = "127.0.0.1:8080", global = true)]
    addr: String,
    /// Ticket used by every connection.
    #[arg(long, global = true, allow_hyphen_values = true)]
    ticket: Option<String>,
    /// Read the ticket from this file (first line).
    #[arg(long, global = true)]
    ticket_file: Option<PathBuf>,
    /// Issue a ticket for every stream into this ticket store (a file or
    /// firestore://PROJECT/COLLECTION) by running `mediarelay ticket issue`.
    #[arg(long, global = true)]
    issue_ticket: Option<String>,
    /// The mediarelay binary used by --issue-ticket (default: next to this one, else PATH).
    #[arg(long, global = true)]
    mediarelay: Option<PathBuf>,
    /// Server dialect: mediarelay's protocol, or socket.io events (the NestJS peer).
    #[arg(long, global = true, value_enum, default_value_t = Proto::Relay)]
    proto: Proto,
    /// Client threads (default: number of CPUs).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// PID(s) of the server, comma-separated, to report its CPU and memory from /proc.
    #[arg(long, global = true, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Print the final report as one JSON object instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Speak TLS (wss://, https:// with `vod --http`), trusting the CA certificate(s) in --ca.
    #[arg(long, global = true, requires = "ca")]
    tls: bool,
    /// PEM file of the CA that signed the server's certificate (with --tls).
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// Name to ask for and verify in the server's certificate (with --tls).
    #[arg(long, global = true, default_value = "localhost")]
    servername: String,
    /// Offer TLS session resumption on later connections (default: every handshake full).
    #[arg(long, global = true)]
    tls_resume: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Clone)]
enum Scenario {
    /// Hold N authenticated idle connections; report server memory per connection.
    Idle(scenarios::idle::Args),
    /// N subscribers on S live streams fed by a producer writing segments into the
    /// server's storage directory.
    Fanout(scenarios::live::Args),
    /// `fanout` with a share of slow and stalled readers among normal ones; reports
    /// whether the normal ones were affected.
    Mixed(scenarios::live::MixedArgs),
    /// VOD: N connections each keeping `inflight` `get`s of random keys outstanding
    /// (`--http`: plain HTTP/1.1 GETs, for web servers).
    Vod(scenarios::vod::Args),
    /// `get`s of PREFIX0 .. PREFIX{count-1}, each once, one in flight per connection.
    Gets(scenarios::vod::GetsArgs),
    /// Handshakes + ticket checks per second, with a share of bad tickets.
    Connect(scenarios::connect::Args),
    /// `fanout` with the segments pushed to the relay (`PUT /ingest/<key>`, one keep-alive
    /// connection per stream) instead of written into storage; reports the latency from
    /// each PUT's last byte to its delivery, and the server's CPU per GB in and out.
    Ingest(scenarios::live::IngestArgs),
}

/// What every scenario gets: where to connect, threads, the server's PIDs, output mode.
pub struct Common {
    pub target: Target,
    pub threads: usize,
    pub server: Server,
    pub json: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let ticket = resolve_ticket(&cli)?;
    let tls = match (&cli.ca, cli.tls) {
        (Some(ca), true) => Some(stream::TlsClient::new(ca, &cli.servername, cli.tls_resume)?),
        _ => None,
    };
    let common = Common {
        target: Target {
            addr: cli.addr.clone(),
            ticket,
            proto: cli.proto,
            tls,
        },
        threads: cli
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1),
        server: Server {
            pids: cli.server_pid.clone(),
        },
        json: cli.json,
    };
    if cli.issue_ticket.is_some() && cli.ticket.is_none() && cli.ticket_file.is_none() {
        wait_until_accepted(&common.target);
    }
    let report = match cli.scenario {
        Scenario::Idle(a) => scenarios::idle::run(&common, a)?,
        Scenario::Fanout(a) => scenarios::live::run(&common, a, None)?,
        Scenario::Mixed(m) => {
            let a = m.live.clone();
            scenarios::live::run(&common, a, Some(m))?
        }
        Scenario::Vod(a) => scenarios::vod::run(&common, a)?,
        Scenario::Gets(a) => scenarios::vod::run(&common, a.into())?,
        Scenario::Connect(a) => scenarios::connect::run(&common, a)?,
        Scenario::Ingest(i) => {
            let ticket = i
                .publish_ticket
                .clone()
                .unwrap_or_else(|| common.target.ticket.clone());
            let producer = scenarios::live::Producer::Ingest(ticket);
            scenarios::live::run_with(&common, i.live, None, producer)?
        }
    };
    report::print(common.json, &report);
    Ok(())
}

fn resolve_ticket(cli: &Cli) -> anyhow::Result<String> {
    if let Some(t) = &cli.ticket {
        return Ok(t.clone());
    }
    if let Some(f) = &cli.ticket_file {
        let text = std::fs::read_to_string(f)
            .map_err(|e| anyhow::anyhow!("--ticket-file {}: {e}", f.display()))?;
        return Ok(text.lines().next().unwrap_or("").trim().to_string());
    }
    if let Some(store) = &cli.issue_ticket {
        let bin = cli.mediarelay.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| Some(p.parent()?.join("mediarelay")))
                .filter(|p| p.exists())
                .unwrap_or_else(|| PathBuf::from("mediarelay"))
        });
        let out = std::process::Command::new(&bin)
            .args(["ticket", "issue", "--tickets", store])
            .args(["--uid", "mediarelay-load", "--streams", "*", "--ttl", "2h"])
            .output()
            .map_err(|e| anyhow::anyhow!("running {}: {e}", bin.display()))?;
        if !out.status.success() {
            anyhow::bail!(
                "{} ticket issue failed: {}",
                bin.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        return Ok(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    Ok(String::new())
}

/// A freshly issued ticket reaches the server at its next ticket-store sync: retry the
/// upgrade (at most 10 s) until it is no longer refused with 401.
fn wait_until_accepted(target: &Target) {
    let mut rt = match monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => return,
    };
    rt.block_on(async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match target.open().await {
                Ok(_) => return,
                Err(e)
                    if e.to_string().contains(" 401 ") && std::time::Instant::now() < deadline =>
                {
                    monoio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => {
                    eprintln!("the issued ticket is not accepted yet: {e}");
                    return;
                }
            }
        }
    });
}
