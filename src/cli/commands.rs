//! The commands that run the relay and manage tickets: `serve` (configuration from file,
//! environment and flags; exit 2 on a bad one) and `ticket issue|revoke|list`.

use std::process::ExitCode;
use std::time::SystemTime;

use super::{ServeArgs, TicketCommand};
use crate::config::Config;
use crate::tickets::{self, TicketRecord};

/// Exit status of a command, printing its error.
pub fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mediarelay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Turn `serve` flags into config overrides.
pub fn overrides(args: &ServeArgs) -> Vec<(&'static str, String)> {
    let mut o = Vec::new();
    let mut add = |k: &'static str, v: &Option<String>| {
        if let Some(v) = v {
            o.push((k, v.clone()));
        }
    };
    add("server.listen", &args.listen);
    add("server.listen_plain", &args.listen_plain);
    add("tls.cert", &args.tls_cert);
    add("tls.key", &args.tls_key);
    add("server.admin", &args.admin);
    add("storage.url", &args.storage);
    add("storage.notifications", &args.notifications);
    add("tickets.url", &args.tickets);
    add("server.workers", &args.workers);
    add("server.driver", &args.driver);
    add("log.level", &args.log_level);
    add("log.format", &args.log_format);
    o
}

/// `mediarelay serve`.
pub fn serve(args: ServeArgs) -> ExitCode {
    let config = match Config::load(args.config.as_deref(), std::env::vars(), &overrides(&args)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mediarelay: bad config: {e}");
            return ExitCode::from(2);
        }
    };
    // A certificate that does not load is a bad setting too: one line, exit 2.
    if let Err(e) = crate::control::check_tls(&config) {
        eprintln!("mediarelay: bad config: {e}");
        return ExitCode::from(2);
    }
    let set_log_level = crate::control::init_logging(&config.log.level, &config.log.format);
    let reloader = crate::control::Reloader {
        read: Box::new(move || {
            Config::load(args.config.as_deref(), std::env::vars(), &overrides(&args))
        }),
        set_log_level,
    };
    report(crate::control::serve(config, None, true, Some(reloader)))
}

/// `mediarelay ticket ...`.
pub fn ticket(cmd: TicketCommand) -> ExitCode {
    let run = || -> anyhow::Result<()> {
        match cmd {
            TicketCommand::Issue {
                tickets: url,
                uid,
                streams,
                ttl,
                max_connections,
                publish,
            } => {
                let ttl = crate::config::parse_duration(&ttl)
                    .map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
                if uid.is_empty() {
                    anyhow::bail!("--uid: must not be empty");
                }
                let streams: Vec<String> = streams.into_iter().filter(|s| !s.is_empty()).collect();
                if streams.is_empty() {
                    anyhow::bail!("--streams: give at least one pattern");
                }
                let publish: Vec<String> = publish.into_iter().filter(|s| !s.is_empty()).collect();
                let store = tickets::open_store(&url)?;
                let ticket = tickets::new_ticket()?;
                let now = SystemTime::now();
                store.insert(
                    tickets::ticket_id(&ticket),
                    TicketRecord {
                        uid,
                        streams,
                        expires_at: now + ttl,
                        revoked: false,
                        max_connections,
                        publish,
                        updated_at: now,
                    },
                )?;
                println!("{ticket}");
            }
            TicketCommand::Revoke {
                tickets: url,
                ticket,
                id,
            } => {
                let id = match (ticket, id) {
                    (Some(t), None) => tickets::ticket_id(&t),
                    (None, Some(h)) => tickets::parse_id_hex(&h).ok_or_else(|| {
                        anyhow::anyhow!("--id: not a lowercase SHA-256 hex string")
                    })?,
                    _ => anyhow::bail!("give a ticket or --id"),
                };
                tickets::open_store(&url)?.revoke(id)?;
                eprintln!("revoked {}", tickets::id_hex(&id));
            }
            TicketCommand::List { tickets: url } => {
                let mut all = tickets::open_store(&url)?.list()?;
                all.sort_by_key(|(_, r)| r.updated_at);
                let now = SystemTime::now();
                println!(
                    "{:<64}  {:<16}  {:<8}  {:<24}  STREAMS  PUBLISH",
                    "ID", "UID", "STATE", "EXPIRES"
                );
                for (id, r) in all {
                    let state = match r.validity(now) {
                        Ok(()) => "valid",
                        Err(tickets::Refusal::Revoked) => "revoked",
                        Err(_) => "expired",
                    };
                    let publish = if r.publish.is_empty() {
                        "-".to_string()
                    } else {
                        r.publish.join(",")
                    };
                    println!(
                        "{:<64}  {:<16}  {:<8}  {:<24}  {}  {}",
                        tickets::id_hex(&id),
                        r.uid,
                        state,
                        humantime::format_rfc3339_seconds(r.expires_at),
                        r.streams.join(","),
                        publish
                    );
                }
            }
        }
        Ok(())
    };
    report(run())
}

/// `mediarelay echo`.
pub fn echo(args: super::EchoArgs) -> ExitCode {
    let max = match crate::config::parse_bytes(&args.max_message) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("mediarelay: --max-message: {e}");
            return ExitCode::from(2);
        }
    };
    let _ = crate::control::init_logging("warn", "text");
    report(crate::control::echo(args.listen, max))
}
