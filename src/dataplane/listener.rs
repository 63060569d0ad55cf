//! The listeners: one public listener per worker on the same address (`SO_REUSEPORT`, the
//! kernel spreading connections over them) and the admin listener on worker 0, each with
//! its accept loop handing connections to the HTTP front end.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Duration;

use monoio::net::{ListenerOpts, TcpListener};

use super::core::Core;
use super::http::{self, Listener};
use super::runtime::contained;

/// A listener that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Another socket holds the address.
    #[error("cannot listen on {0}: the address is in use (is another relay running?)")]
    InUse(SocketAddr),
    /// Any other failure to bind or listen.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

/// The workers' public listeners share one address through `SO_REUSEPORT`, which would also
/// let a second relay process (a stale one, a typo in a unit file) join the group and
/// silently take a share of the connections. Binding once without `SO_REUSEPORT` first
/// fails with "address in use" exactly when any other socket holds the address.
pub fn ensure_unshared(addr: SocketAddr) -> Result<(), ListenError> {
    if addr.port() == 0 {
        return Ok(());
    }
    match std::net::TcpListener::bind(addr) {
        Ok(probe) => {
            drop(probe);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(ListenError::InUse(addr)),
        Err(e) => Err(ListenError::Bind(addr, e)),
    }
}

/// A worker's public listener: one per worker on the same address (`SO_REUSEPORT`), the
/// kernel spreading connections over them; or, `shared == false`, the admin listener, which
/// no other socket may share.
pub fn listen(addr: SocketAddr, backlog: u32, shared: bool) -> Result<TcpListener, ListenError> {
    let opts = ListenerOpts::new()
        .reuse_port(shared)
        .reuse_addr(true)
        .backlog(backlog.min(i32::MAX as u32) as i32);
    TcpListener::bind_with_config(addr, &opts).map_err(|e| ListenError::Bind(addr, e))
}

/// Accept public connections (TLS ones when `tls`) for as long as the worker runs, its
/// drain included (the worker stops the listener with [`stop_listening`] when it ends).
pub async fn accept_public(core: Rc<Core>, listener: TcpListener, tls: bool) {
    let which = if tls {
        Listener::PublicTls
    } else {
        Listener::Public
    };
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                core.stats.accepted.inc();
                monoio::spawn(contained(http::serve(core.clone(), stream, peer, which)));
            }
            Err(e) => accept_error(e).await,
        }
    }
}

/// Stop the listener `fd` listening now, so that the address is free when the process
/// exits ([`crate::sys::stop_listening`]).
pub fn stop_listening(fd: RawFd) {
    if let Err(e) = crate::sys::stop_listening(fd) {
        tracing::debug!("shutdown of a listener: {e}");
    }
}

/// Accept admin connections for as long as the worker runs (the worker stops the listener
/// with [`stop_listening`] when it ends; the listener stays open until then).
pub async fn accept_admin(core: Rc<Core>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                monoio::spawn(contained(http::serve(
                    core.clone(),
                    stream,
                    peer,
                    Listener::Admin,
                )));
            }
            Err(e) => accept_error(e).await,
        }
    }
}

async fn accept_error(e: std::io::Error) {
    // Out of descriptors or memory: back off instead of spinning.
    tracing::warn!("accept failed: {e}");
    monoio::time::sleep(Duration::from_millis(50)).await;
}
