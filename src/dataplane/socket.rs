//! A client connection's byte stream, plain or TLS, as the front end and the session use
//! it: non-blocking `recv`/`writev` of plaintext after a readiness wait.
//!
//! With TLS, a [`TlsConn`] (rustls's unbuffered API) sits between those calls and the
//! socket: `recv` reads ciphertext from the socket and returns plaintext; `writev` encrypts
//! plaintext into the connection's outgoing buffer (rustls seals a copy of it in its own
//! record buffer, then copies the record there) and writes it to the socket as far as it
//! takes it. At most [`super::tls::ENCRYPT_AHEAD`] bytes of
//! plaintext are encrypted ahead; beyond that `writev` reports the socket full, so the send
//! queue (and its slow-consumer policy) keeps the rest. Both buffers exist only while bytes
//! are in flight: the read buffer goes when a read finds the socket empty with no partial
//! record held, the write buffer when its owner says it has nothing more to send
//! ([`Socket::quiet`]).
//!
//! A plain connection also sends payloads that sit in a payload file with `sendfile`
//! ([`Socket::sendfile`]): the frame's head goes first with `MSG_MORE`, then the kernel
//! queues the file's pages, and no copy of the payload is made on the sending side.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use monoio::net::TcpStream;

use super::tls::{Handshake, TlsConn};
use crate::sys::{self, Io};

/// A connection's stream.
pub struct Socket {
    stream: TcpStream,
    /// Boxed: a plain connection's task must not carry rustls's state inline.
    tls: Option<Box<RefCell<TlsConn>>>,
    /// The descriptor is in non-blocking mode (set before the first `sendfile`).
    nonblocking: Cell<bool>,
}

/// Why a TLS handshake did not complete.
#[derive(Debug)]
pub enum HandshakeFailure {
    /// Not complete within the handshake timeout.
    Timeout,
    /// Closed, or not TLS (plain HTTP sent to the TLS port), or refused by rustls.
    Failed(String),
}

impl Socket {
    /// A plain-text connection.
    pub fn plain(stream: TcpStream) -> Socket {
        Socket {
            stream,
            tls: None,
            nonblocking: Cell::new(false),
        }
    }

    /// A TLS connection whose handshake is still to run ([`Socket::handshake`]).
    pub fn tls(stream: TcpStream, conn: TlsConn) -> Socket {
        Socket {
            stream,
            tls: Some(Box::new(RefCell::new(conn))),
            nonblocking: Cell::new(false),
        }
    }

    /// The TCP stream (for readiness waits).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The negotiated TLS version, once the handshake is done.
    pub fn tls_version(&self) -> Option<rustls::ProtocolVersion> {
        self.tls.as_ref()?.borrow().protocol_version()
    }

    /// Run the TLS handshake until it completes, fails, or `deadline` passes. Plain: done.
    pub async fn handshake(&self, deadline: Instant) -> Result<(), HandshakeFailure> {
        let Some(tls) = &self.tls else { return Ok(()) };
        loop {
            let step = tls.borrow_mut().handshake(self.fd());
            match step.map_err(HandshakeFailure::Failed)? {
                Handshake::Complete => return Ok(()),
                Handshake::WantRead => self.wait(deadline, true).await?,
                Handshake::WantWrite => self.wait(deadline, false).await?,
            }
        }
    }

    async fn wait(&self, deadline: Instant, read: bool) -> Result<(), HandshakeFailure> {
        let ready = if read {
            monoio::time::timeout_at(deadline.into(), self.stream.readable(false)).await
        } else {
            monoio::time::timeout_at(deadline.into(), self.stream.writable(false)).await
        };
        match ready {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(HandshakeFailure::Failed(e.to_string())),
            Err(_) => Err(HandshakeFailure::Timeout),
        }
    }

    /// Read plaintext: `Done(0)` at the end of the stream.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Io> {
        match &self.tls {
            None => sys::recv(self.fd(), buf),
            Some(tls) => tls.borrow_mut().recv(self.fd(), buf),
        }
    }

    /// Whether a short `recv` means the socket has nothing more (plain), as opposed to
    /// rustls having returned one record's worth (TLS: read until `WouldBlock`).
    pub fn short_read_drains(&self) -> bool {
        self.tls.is_none()
    }

    /// Whether payload files go out with [`Socket::sendfile`] (plain text only: TLS must
    /// encrypt every byte in user space).
    pub fn sends_files(&self) -> bool {
        self.tls.is_none()
    }

    /// `sendfile` `len` bytes of `file` from `offset` (plain text only). The socket is made
    /// non-blocking first: after the upgrade it is only used through readiness waits and
    /// these calls.
    pub fn sendfile(&self, file: RawFd, offset: u64, len: usize) -> io::Result<Io> {
        if self.tls.is_some() {
            return Err(io::Error::other("sendfile on a TLS connection"));
        }
        if !self.nonblocking.get() {
            sys::set_nonblocking(self.fd())?;
            self.nonblocking.set(true);
        }
        sys::sendfile(self.fd(), file, offset, len)
    }

    /// Write plaintext: how many bytes of `parts` were taken (sent, or encrypted and on
    /// their way), or `WouldBlock` when the socket (and, with TLS, the encrypted backlog)
    /// is full. `more`: a `sendfile` of the same frame follows (plain text only).
    pub fn writev(&self, parts: &[&[u8]], more: bool) -> io::Result<Io> {
        match &self.tls {
            None => sys::writev(self.fd(), parts, more),
            Some(tls) => tls.borrow_mut().write(self.fd(), parts),
        }
    }

    /// Write encrypted bytes still waiting: `Ok(true)` when none are left.
    pub fn flush(&self) -> io::Result<bool> {
        match &self.tls {
            None => Ok(true),
            Some(tls) => tls.borrow_mut().flush(self.fd()),
        }
    }

    /// Whether encrypted bytes wait to be written.
    pub fn pending_output(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|c| c.borrow().pending_output())
    }

    /// Nothing more to send for now: TLS frees its write buffer (if it is empty).
    pub fn quiet(&self) {
        if let Some(tls) = &self.tls {
            tls.borrow_mut().release();
        }
    }

    /// Queue TLS's `close_notify` (once), before the socket's write side is shut: the
    /// client learns the stream ended whole. Then [`Socket::flush`] until done.
    pub fn close_notify(&self) {
        if let Some(tls) = &self.tls {
            tls.borrow_mut().close_notify();
        }
    }

    /// Shut the write side (after `close_notify` and a flush, best effort, with TLS).
    pub fn shutdown_write(&self) {
        self.close_notify();
        let _ = self.flush();
        sys::shutdown_write(self.fd());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_connection_carries_no_tls_state_inline() {
        // Every connection's task holds its Socket: rustls's state (kilobytes) stays boxed,
        // so idle plain connections cost what they did before TLS (a regression caught by
        // `mediarelay-load idle`: 1.4 -> 5.6 KiB per connection with it inline).
        let rustls_state = std::mem::size_of::<TlsConn>();
        eprintln!(
            "Socket: {} B; TLS state: {rustls_state} B",
            std::mem::size_of::<Socket>()
        );
        assert!(std::mem::size_of::<Socket>() <= 128);
        assert!(
            rustls_state > 256,
            "if rustls became small, this guard can go"
        );
    }
}
