//! Logging set-up, and the handle SIGHUP uses to change the level of a running process.

use std::io::IsTerminal;

use tracing_subscriber::prelude::*;
use tracing_subscriber::{fmt, reload, EnvFilter};

/// A log filter that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadFilter(String);

/// Changes the log filter of a running process.
pub type SetLogLevel = Box<dyn Fn(&str) -> Result<(), BadFilter> + Send>;

/// Set up logging from the config (`RUST_LOG` wins when set). Returns the setter SIGHUP uses
/// to apply a new `log.level` (a no-op when `RUST_LOG` is set).
pub fn init_logging(level: &str, format: &str) -> SetLogLevel {
    let from_env = EnvFilter::try_from_default_env().ok();
    let env_set = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(level));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    // Colours only for a person at a terminal: files, pipes and journald get plain text.
    let ansi = std::io::stderr().is_terminal();
    let _ = if format == "json" {
        registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init()
    } else {
        registry
            .with(fmt::layer().with_ansi(ansi).with_writer(std::io::stderr))
            .try_init()
    };
    Box::new(move |level: &str| {
        if env_set {
            return Ok(());
        }
        let filter = EnvFilter::try_new(level).map_err(|e| BadFilter(e.to_string()))?;
        handle.reload(filter).map_err(|e| BadFilter(e.to_string()))
    })
}
