//! A client connection's byte stream, plain or TLS, as the front end and the session use
//! it: non-blocking `recv`/`writev` of plaintext after a readiness wait.
//!
//! With TLS, rustls (its buffered `ServerConnection`) sits between those calls and the
//! socket: `recv` reads ciphertext straight from the socket into rustls and returns
//! plaintext; `writev` encrypts plaintext into rustls's outgoing records (the one copy TLS
//! needs) and writes them to the socket as far as it takes them. At most
//! [`super::tls::PENDING_CIPHERTEXT`] bytes wait encrypted; beyond that `writev` reports
//! the socket full, so the send queue (and its slow-consumer policy) keeps the rest.
//!
//! A plain connection also sends payloads that sit in a payload file with `sendfile`
//! ([`Socket::sendfile`]): the frame's head goes first with `MSG_MORE`, then the kernel
//! queues the file's pages, and no copy of the payload is made on the sending side.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use monoio::net::TcpStream;

use crate::sys::{self, Io};

/// A connection's stream.
pub struct Socket {
    stream: TcpStream,
    /// Boxed: a plain connection's task must not carry rustls's state inline.
    tls: Option<Box<RefCell<rustls::ServerConnection>>>,
    /// `close_notify` queued (TLS).
    notified: Cell<bool>,
    /// The descriptor is in non-blocking mode (set before the first `sendfile`).
    nonblocking: Cell<bool>,
}

/// The socket as `io::Read`/`io::Write` for rustls (non-blocking: `WouldBlock` errors).
struct Fd(RawFd);

impl io::Read for Fd {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match sys::recv(self.0, buf)? {
            Io::Done(n) => Ok(n),
            Io::WouldBlock => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl io::Write for Fd {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[io::IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let mut parts: [&[u8]; 64] = [&[]; 64];
        let n = bufs.len().min(parts.len());
        for (p, b) in parts.iter_mut().zip(bufs) {
            *p = b;
        }
        match sys::writev(self.0, &parts[..n], false)? {
            Io::Done(n) => Ok(n),
            Io::WouldBlock => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Why a TLS handshake did not complete.
#[derive(Debug)]
pub enum HandshakeFailure {
    /// Not complete within the handshake timeout.
    Timeout,
    /// Closed, or not TLS (plain HTTP sent to the TLS port), or refused by rustls.
    Failed(String),
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl Socket {
    /// A plain-text connection.
    pub fn plain(stream: TcpStream) -> Socket {
        Socket {
            stream,
            tls: None,
            notified: Cell::new(false),
            nonblocking: Cell::new(false),
        }
    }

    /// A TLS connection whose handshake is still to run ([`Socket::handshake`]).
    pub fn tls(stream: TcpStream, mut conn: rustls::ServerConnection) -> Socket {
        conn.set_buffer_limit(Some(super::tls::PENDING_CIPHERTEXT));
        Socket {
            stream,
            tls: Some(Box::new(RefCell::new(conn))),
            notified: Cell::new(false),
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
        let fd = self.fd();
        loop {
            let want_write = !self
                .flush()
                .map_err(|e| HandshakeFailure::Failed(e.to_string()))?;
            let handshaking = tls.borrow().is_handshaking();
            if want_write {
                self.wait(deadline, false).await?;
                continue;
            }
            if !handshaking {
                return Ok(());
            }
            let read = {
                let mut c = tls.borrow_mut();
                match c.read_tls(&mut Fd(fd)) {
                    Ok(0) => Err(HandshakeFailure::Failed(
                        "closed during the handshake".into(),
                    )),
                    Ok(_) => match c.process_new_packets() {
                        Ok(_) => Ok(true),
                        Err(e) => {
                            // Send the alert rustls queued, best effort.
                            let _ = c.write_tls(&mut Fd(fd));
                            Err(HandshakeFailure::Failed(e.to_string()))
                        }
                    },
                    Err(e) if would_block(&e) => Ok(false),
                    Err(e) => Err(HandshakeFailure::Failed(e.to_string())),
                }
            };
            if !read? {
                self.wait(deadline, true).await?;
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
        let Some(tls) = &self.tls else {
            return sys::recv(self.fd(), buf);
        };
        let fd = self.fd();
        let mut c = tls.borrow_mut();
        loop {
            match io::Read::read(&mut c.reader(), buf) {
                Ok(n) => return Ok(Io::Done(n)),
                Err(e) if would_block(&e) => {}
                // Closed without close_notify: the end of the stream all the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Io::Done(0)),
                Err(e) => return Err(e),
            }
            match c.read_tls(&mut Fd(fd)) {
                Ok(0) => return Ok(Io::Done(0)),
                Ok(_) => {
                    if let Err(e) = c.process_new_packets() {
                        let _ = c.write_tls(&mut Fd(fd));
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                    // Post-handshake messages (session tickets, key updates) to answer.
                    while c.wants_write() {
                        match c.write_tls(&mut Fd(fd)) {
                            Ok(_) => {}
                            Err(e) if would_block(&e) => break,
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) if would_block(&e) => return Ok(Io::WouldBlock),
                Err(e) => return Err(e),
            }
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
        let Some(tls) = &self.tls else {
            return sys::writev(self.fd(), parts, more);
        };
        if !self.flush()? {
            return Ok(Io::WouldBlock);
        }
        let taken = {
            let mut c = tls.borrow_mut();
            let mut slices = [io::IoSlice::new(&[]); 64];
            let n = parts.len().min(slices.len());
            for (s, p) in slices.iter_mut().zip(parts) {
                *s = io::IoSlice::new(p);
            }
            io::Write::write_vectored(&mut c.writer(), &slices[..n])?
        };
        self.flush()?;
        Ok(if taken == 0 && parts.iter().any(|p| !p.is_empty()) {
            Io::WouldBlock
        } else {
            Io::Done(taken)
        })
    }

    /// Write encrypted bytes still waiting: `Ok(true)` when none are left.
    pub fn flush(&self) -> io::Result<bool> {
        let Some(tls) = &self.tls else {
            return Ok(true);
        };
        let mut c = tls.borrow_mut();
        while c.wants_write() {
            match c.write_tls(&mut Fd(self.fd())) {
                Ok(_) => {}
                Err(e) if would_block(&e) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Whether encrypted bytes wait to be written.
    pub fn pending_output(&self) -> bool {
        self.tls.as_ref().is_some_and(|c| c.borrow().wants_write())
    }

    /// Queue TLS's `close_notify` (once), before the socket's write side is shut: the
    /// client learns the stream ended whole. Then [`Socket::flush`] until done.
    pub fn close_notify(&self) {
        if let Some(tls) = &self.tls {
            if !self.notified.replace(true) {
                tls.borrow_mut().send_close_notify();
            }
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
        let rustls_state = std::mem::size_of::<rustls::ServerConnection>();
        eprintln!(
            "Socket: {} B; rustls ServerConnection: {rustls_state} B",
            std::mem::size_of::<Socket>()
        );
        assert!(std::mem::size_of::<Socket>() <= 128);
        assert!(
            rustls_state > 256,
            "if rustls became small, this guard can go"
        );
    }
}
