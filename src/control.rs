//! The control plane: background work off the data path. A thread keeps the ticket
//! snapshot current (re-reading the store when it changes, keeping the last good snapshot
//! when a load fails), and the signal handler turns SIGTERM/SIGINT into a graceful drain.

use std::sync::Arc;
use std::time::Duration;

use crate::tickets::snapshot::TicketCell;
use crate::tickets::TicketStore;

/// Load the store once now (so the relay starts ready when it can), then keep reloading
/// it every `interval` on a background thread.
pub fn start_ticket_refresh(
    store: Box<dyn TicketStore>,
    cell: Arc<TicketCell>,
    interval: Duration,
) -> std::io::Result<()> {
    refresh(store.as_ref(), &cell);
    std::thread::Builder::new()
        .name("tickets".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            refresh(store.as_ref(), &cell);
        })?;
    Ok(())
}

fn refresh(store: &dyn TicketStore, cell: &TicketCell) {
    match store.load_if_changed() {
        Ok(Some(records)) => {
            tracing::info!(tickets = records.len(), store = %store.describe(), "ticket snapshot loaded");
            cell.publish(records);
        }
        Ok(None) => {}
        Err(e) => tracing::error!("ticket store unreadable, keeping the last good snapshot: {e}"),
    }
}

/// Send on `tx` at the first SIGTERM or SIGINT; a second one exits at once.
pub fn on_shutdown_signal(tx: flume::Sender<()>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = false;
            for sig in signals.forever() {
                if seen {
                    tracing::warn!(signal = sig, "second signal: exiting now");
                    std::process::exit(1);
                }
                seen = true;
                tracing::info!(signal = sig, "draining");
                let _ = tx.send(());
            }
        })?;
    Ok(())
}
