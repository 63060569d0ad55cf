//! Signals: SIGTERM/SIGINT start the graceful drain (a second one exits at once), SIGHUP
//! asks for a configuration reload.

/// Send on `shutdown` at the first SIGTERM or SIGINT (a second one exits at once), and on
/// `reload` at each SIGHUP.
pub fn on_signals(shutdown: flume::Sender<()>, reload: flume::Sender<()>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = false;
            for sig in signals.forever() {
                if sig == SIGHUP {
                    let _ = reload.send(());
                    continue;
                }
                if seen {
                    tracing::warn!(signal = sig, "second signal: exiting now");
                    std::process::exit(1);
                }
                seen = true;
                tracing::info!(signal = sig, "draining");
                let _ = shutdown.send(());
            }
        })?;
    Ok(())
}
