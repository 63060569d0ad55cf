//! TLS on the public listener (PROTOCOL.md v1.1): the rustls server configuration made from
//! `[tls]` (PEM certificate chain and key; TLS 1.3 and 1.2, ALPN `http/1.1`, ring as the
//! crypto provider, session resumption with tickets), swapped whole on SIGHUP so new
//! connections use the new certificate while open ones keep theirs; and each connection's
//! record layer ([`TlsConn`], rustls's unbuffered API over buffers that exist only while
//! bytes are in flight).
//!
//! [`super::socket::Socket`] puts a [`TlsConn`] between its callers and the socket and does
//! the readiness waits.

use std::cell::RefCell;
use std::io;
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::Arc;

use rustls::server::{ProducesTickets, ServerConnectionData};
use rustls::unbuffered::{ConnectionState, EncodeError, EncodeTlsData, EncryptError, WriteTraffic};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;
use crate::sys::{self, Io};

/// Plaintext a connection encrypts ahead of the socket in one write: a 64 KiB payload and
/// its frame head go together. Until that is written it takes no more (the send queue keeps
/// the rest, where the slow-consumer policy sees it).
pub const ENCRYPT_AHEAD: usize = (64 << 10) + 1024;

/// Why a certificate or key did not load, phrased for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

/// The running TLS configuration, replaced whole on reload. The ticket keys stay across
/// reloads, so players resume their sessions after a certificate change.
pub struct Tls {
    current: arc_swap::ArcSwap<rustls::ServerConfig>,
    ticketer: Arc<dyn ProducesTickets>,
}

impl Tls {
    /// Load `[tls]`; `Ok(None)` when no certificate is configured.
    pub fn load(config: &TlsConfig) -> Result<Option<Tls>, TlsError> {
        if !config.enabled() {
            return Ok(None);
        }
        let ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| TlsError(format!("tls: session tickets: {e}")))?;
        let server = build(config, ticketer.clone())?;
        Ok(Some(Tls {
            current: arc_swap::ArcSwap::from_pointee(server),
            ticketer,
        }))
    }

    /// The configuration new connections use.
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.current.load_full()
    }

    /// Read the certificate and key again and use them for new connections; on error the
    /// running ones stay.
    pub fn reload(&self, config: &TlsConfig) -> Result<(), TlsError> {
        let server = build(config, self.ticketer.clone())?;
        self.current.store(Arc::new(server));
        Ok(())
    }
}

/// A server configuration from the PEM files of `config`.
fn build(
    config: &TlsConfig,
    ticketer: Arc<dyn ProducesTickets>,
) -> Result<rustls::ServerConfig, TlsError> {
    let (Some(cert), Some(key)) = (&config.cert, &config.key) else {
        return Err(TlsError("tls: needs both tls.cert and tls.key".into()));
    };
    let chain = load_chain(cert)?;
    let key = load_key(key)?;
    // AES-128-GCM first, whatever the client prefers: it is the cheapest suite to encrypt
    // with AES instructions, and encryption is the relay's main TLS cost (bench/RESULTS.md:
    // relay CPU per GB 0.45 with AES-128-GCM, 0.49 with AES-256-GCM, 0.85-0.90 with
    // ChaCha20-Poly1305, measured with a client that offers AES-256 first).
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|s| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 1,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 2,
        _ => 3,
    });
    let provider = Arc::new(provider);
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError(format!("tls: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError(format!("tls: certificate and key do not go together: {e}")))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    server.ignore_client_order = true;
    server.ticketer = ticketer;
    // Tickets carry the TLS 1.3 session state; the cache serves TLS 1.2 session ids.
    server.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    Ok(server)
}

fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let fail = |why: String| TlsError(format!("tls.cert {}: {why}", path.display()));
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if chain.is_empty() {
        return Err(fail("no CERTIFICATE in the file".into()));
    }
    Ok(chain)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| TlsError(format!("tls.key {}: {e}", path.display())))
}

/// The negotiated protocol version as a metric label.
pub fn version_label(v: Option<rustls::ProtocolVersion>) -> &'static str {
    match v {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "other",
    }
}

/// Room kept for one ciphertext read: a whole record of the largest size a peer may send
/// (16 KiB of plaintext and its overhead).
const READ_SIZE: usize = 16 * 1024 + 2048 + 5;

/// Ciphertext a client may make the relay hold unprocessed: a handshake message joined
/// from several records (rustls accepts up to 64 KiB) plus one more record.
const MAX_INCOMING: usize = 0x10000 + READ_SIZE;

/// Size of the buffers TLS connections read into and encrypt into: what
/// [`ENCRYPT_AHEAD`] bytes of plaintext become, with room to spare.
const BUFFER: usize = ENCRYPT_AHEAD + 4096;

/// Buffers of this size a worker keeps for its connections, at most.
const SPARE_BUFFERS: usize = 32;

thread_local! {
    /// This worker's spare ciphertext buffers, [`BUFFER`] bytes each, kept initialized: a
    /// connection with bytes in flight takes one without an allocation or zeroing, and gives
    /// it back when nothing is in flight any more.
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

fn take_buffer() -> Vec<u8> {
    SPARE
        .try_with(|s| s.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| vec![0; BUFFER])
}

fn give_buffer(buf: Vec<u8>) {
    // Grown ones (a large handshake message) go back to the allocator, and so does
    // everything while the thread ends.
    if buf.len() == BUFFER {
        let _ = SPARE.try_with(|s| {
            let mut spare = s.borrow_mut();
            if spare.len() < SPARE_BUFFERS {
                spare.push(buf);
            }
        });
    }
}

/// Plaintext gathered into one record when a write has several small parts (a frame's
/// head and a short message), instead of one record each.
const COALESCE: usize = 4096;

/// How a handshake step ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Handshake {
    Complete,
    /// Wait for the socket to be readable, then step again.
    WantRead,
    /// Wait for the socket to be writable, then step again.
    WantWrite,
}

/// What one call into rustls's state machine produced.
enum Step {
    /// Progress (plaintext read, records encoded): call again.
    Again,
    /// rustls needs more ciphertext.
    NeedInput,
    /// The connection may send application data (and needs input to go on reading).
    Traffic,
    /// The peer sent `close_notify` (reported once).
    PeerClosed,
    /// Both sides have sent `close_notify`.
    Closed,
}

/// Bytes held for one direction of a connection: `buf[start..end]`. `buf` is a worker's
/// buffer (its length is what is initialized) from the first byte put in until
/// [`Window::release`], empty otherwise.
#[derive(Default)]
struct Window {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// How much of `buf` has held bytes since it was taken.
    dirty: usize,
}

impl Window {
    /// Room for at least `n` more bytes at the end: a worker's buffer if there is none,
    /// what is held moved to the front if the end is short, grown only past the buffer.
    fn room(&mut self, n: usize) -> &mut [u8] {
        if self.buf.is_empty() {
            self.buf = take_buffer();
        }
        if self.buf.len() - self.end < n {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() - self.end < n {
                self.buf.resize(self.end + n, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were put in the room.
    fn commit(&mut self, n: usize) {
        self.end += n;
        self.dirty = self.dirty.max(self.end);
    }

    /// Put bytes in with `put`, which writes into the room it is given and returns how many,
    /// or fails; `needs` reads from a failure the room that would do (`None`: a real
    /// failure, returned). Starts with room for `need` bytes.
    fn fill<E>(
        &mut self,
        mut need: usize,
        mut put: impl FnMut(&mut [u8]) -> Result<usize, E>,
        needs: impl Fn(&E) -> Option<usize>,
    ) -> Result<(), E> {
        loop {
            match put(self.room(need)) {
                Ok(n) => {
                    self.commit(n);
                    return Ok(());
                }
                Err(e) => need = needs(&e).ok_or(e)?,
            }
        }
    }

    /// The bytes held.
    fn held(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.end]
    }

    /// `n` bytes from the start are done with.
    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    fn len(&self) -> usize {
        self.end - self.start
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Give the buffer back if nothing is held in it; `wipe`: zero what it held first.
    fn release(&mut self, wipe: bool) {
        if self.is_empty() && !self.buf.is_empty() {
            if wipe {
                self.buf[..self.dirty].fill(0);
            }
            give_buffer(std::mem::take(&mut self.buf));
            *self = Window::default();
        }
    }
}

/// One TLS connection's record layer, over rustls's unbuffered API: ciphertext is read
/// into and written from buffers taken from the worker while bytes are in flight. The read
/// buffer goes back when a read (or a handshake step) finds the socket empty with no partial
/// record held, the write buffer when the owner calls [`TlsConn::release`] (the session
/// when its queue is empty, the HTTP front end after each answer). An idle connection so
/// holds rustls's session state and nothing else; rustls's buffered connection kept a 4 KiB
/// read buffer for its whole life.
///
/// Every method works on a non-blocking descriptor and reports `WouldBlock` for the caller
/// to wait on ([`super::socket::Socket`] does the waiting).
pub struct TlsConn {
    conn: rustls::server::UnbufferedServerConnection,
    /// Ciphertext read and not yet processed (rustls decrypts it in place: wiped before
    /// the buffer goes back).
    incoming: Window,
    /// Plaintext decrypted and not yet read: `plain[plain_at..]`.
    plain: Vec<u8>,
    plain_at: usize,
    /// Ciphertext waiting to be written.
    out: Window,
    peer_closed: bool,
    close_notified: bool,
}

fn tls_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl TlsConn {
    /// A server connection for `config`, before its handshake.
    pub fn new(config: Arc<rustls::ServerConfig>) -> Result<TlsConn, rustls::Error> {
        Ok(TlsConn {
            conn: rustls::server::UnbufferedServerConnection::new(config)?,
            incoming: Window::default(),
            plain: Vec::new(),
            plain_at: 0,
            out: Window::default(),
            peer_closed: false,
            close_notified: false,
        })
    }

    /// The negotiated version, once the handshake has chosen one.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// Drive the handshake as far as the socket allows.
    pub fn handshake(&mut self, fd: RawFd) -> Result<Handshake, String> {
        loop {
            match self.step(&mut [], |_, _| {}) {
                Ok((Step::Again, _)) => continue,
                Ok((Step::Traffic, _)) if !self.conn.is_handshaking() => {
                    // The last flight (TLS 1.2's Finished, TLS 1.3's tickets) goes first.
                    if !self.flush(fd).map_err(|e| e.to_string())? {
                        return Ok(Handshake::WantWrite);
                    }
                    return Ok(Handshake::Complete);
                }
                Ok((Step::NeedInput | Step::Traffic, _)) => {
                    if !self.flush(fd).map_err(|e| e.to_string())? {
                        return Ok(Handshake::WantWrite);
                    }
                    match self.read_socket(fd).map_err(|e| e.to_string())? {
                        Io::Done(0) => return Err("closed during the handshake".into()),
                        Io::Done(_) => continue,
                        Io::WouldBlock => {
                            // A client that connects and waits holds no read buffer.
                            self.incoming.release(true);
                            return Ok(Handshake::WantRead);
                        }
                    }
                }
                Ok((Step::PeerClosed | Step::Closed, _)) if !self.conn.is_handshaking() => {
                    // Finished, data and close_notify in one go: the data is read first.
                    self.peer_closed = true;
                    return Ok(Handshake::Complete);
                }
                Ok((Step::PeerClosed | Step::Closed, _)) => {
                    return Err("closed during the handshake".into())
                }
                Err(e) => {
                    self.send_alert(fd);
                    return Err(e.to_string());
                }
            }
        }
    }

    /// Read plaintext into `buf`: `Done(0)` at the end of the stream (`close_notify`, or
    /// the socket closed without one).
    pub fn recv(&mut self, fd: RawFd, buf: &mut [u8]) -> io::Result<Io> {
        loop {
            if self.plain_at < self.plain.len() {
                let n = buf.len().min(self.plain.len() - self.plain_at);
                buf[..n].copy_from_slice(&self.plain[self.plain_at..self.plain_at + n]);
                self.plain_at += n;
                if self.plain_at == self.plain.len() {
                    self.plain = Vec::new();
                    self.plain_at = 0;
                }
                return Ok(Io::Done(n));
            }
            if self.peer_closed {
                return Ok(Io::Done(0));
            }
            match self.step(buf, |_, _| {}) {
                Ok((_, copied)) if copied > 0 => return Ok(Io::Done(copied)),
                Ok((Step::Again, _)) => {
                    // Answers to post-handshake messages (key updates) go out at once.
                    self.flush(fd)?;
                }
                Ok((Step::NeedInput | Step::Traffic, _)) => match self.read_socket(fd)? {
                    Io::Done(0) => return Ok(Io::Done(0)),
                    Io::Done(_) => {}
                    Io::WouldBlock => {
                        // Nothing in flight: the read buffer goes until bytes arrive.
                        self.incoming.release(true);
                        return Ok(Io::WouldBlock);
                    }
                },
                Ok((Step::PeerClosed | Step::Closed, _)) => self.peer_closed = true,
                Err(e) => {
                    self.send_alert(fd);
                    return Err(tls_error(e));
                }
            }
        }
    }

    /// Encrypt the start of `parts`, at most [`ENCRYPT_AHEAD`] bytes of plaintext,
    /// once everything encrypted before has been written: how many bytes were taken
    /// (encrypted, and written as far as the socket took them), or `WouldBlock`.
    pub fn write(&mut self, fd: RawFd, parts: &[&[u8]]) -> io::Result<Io> {
        if !self.flush(fd)? {
            return Ok(Io::WouldBlock);
        }
        let taken = self.with_traffic(|w, out| encrypt_parts(w, out, parts))??;
        self.flush(fd)?;
        Ok(if taken == 0 && parts.iter().any(|p| !p.is_empty()) {
            Io::WouldBlock
        } else {
            Io::Done(taken)
        })
    }

    /// Write ciphertext that waits: `Ok(true)` when none is left.
    pub fn flush(&mut self, fd: RawFd) -> io::Result<bool> {
        while !self.out.is_empty() {
            match sys::writev(fd, &[self.out.held()], false)? {
                Io::Done(n) => self.out.consume(n),
                Io::WouldBlock => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Whether ciphertext waits to be written.
    pub fn pending_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Free the write buffer if nothing waits in it (the caller has nothing more to send
    /// for now).
    pub fn release(&mut self) {
        self.out.release(false);
    }

    /// Queue `close_notify` (once); [`TlsConn::flush`] sends it.
    pub fn close_notify(&mut self) {
        if std::mem::replace(&mut self.close_notified, true) {
            return;
        }
        let _ = self
            .with_traffic(|w, out| out.fill(64, |room| w.queue_close_notify(room), encrypt_needs));
    }

    /// One call into rustls with the ciphertext held (always: rustls may hold part of a
    /// handshake message in it, and fails on an empty buffer then). Records rustls makes go
    /// to `out`; decrypted plaintext to `dest` (how much is returned) and what does not fit
    /// to `plain`; in the write-traffic state, `write` runs.
    fn step(
        &mut self,
        dest: &mut [u8],
        write: impl FnOnce(&mut WriteTraffic<'_, ServerConnectionData>, &mut Window),
    ) -> Result<(Step, usize), rustls::Error> {
        let status = self.conn.process_tls_records(self.incoming.held());
        let discard = status.discard;
        let mut copied = 0;
        let step = match status.state {
            Err(e) => Err(e),
            Ok(ConnectionState::ReadTraffic(mut r)) => loop {
                match r.next_record() {
                    None => break Ok(Step::Again),
                    Some(Err(e)) => break Err(e),
                    Some(Ok(record)) => {
                        let payload = record.payload;
                        let n = (dest.len() - copied).min(payload.len());
                        dest[copied..copied + n].copy_from_slice(&payload[..n]);
                        copied += n;
                        self.plain.extend_from_slice(&payload[n..]);
                    }
                }
            },
            Ok(ConnectionState::EncodeTlsData(mut e)) => {
                encode(&mut e, &mut self.out);
                Ok(Step::Again)
            }
            // The records are in `out`, which is written in order by `flush`.
            Ok(ConnectionState::TransmitTlsData(t)) => {
                t.done();
                Ok(Step::Again)
            }
            Ok(ConnectionState::BlockedHandshake) => Ok(Step::NeedInput),
            Ok(ConnectionState::WriteTraffic(mut w)) => {
                write(&mut w, &mut self.out);
                Ok(Step::Traffic)
            }
            Ok(ConnectionState::PeerClosed) => Ok(Step::PeerClosed),
            Ok(ConnectionState::Closed) => Ok(Step::Closed),
            // Early data is not enabled; anything else is not expected of a server.
            Ok(other) => Err(rustls::Error::General(format!(
                "unexpected TLS state {other:?}"
            ))),
        };
        self.incoming.consume(discard);
        Ok((step?, copied))
    }

    /// Run `f` with the connection in its write-traffic state (records rustls wants sent
    /// first go to `out` before it, plaintext it decrypts to `plain`).
    fn with_traffic<R>(
        &mut self,
        f: impl FnOnce(&mut WriteTraffic<'_, ServerConnectionData>, &mut Window) -> R,
    ) -> io::Result<R> {
        let mut f = Some(f);
        let mut done = None;
        loop {
            let step = self.step(&mut [], |w, out| done = f.take().map(|f| f(w, out)));
            match step.map_err(tls_error)? {
                (Step::Traffic, _) => {
                    if let Some(done) = done {
                        return Ok(done);
                    }
                }
                (Step::Again, _) => {}
                (Step::PeerClosed, _) => self.peer_closed = true,
                (Step::NeedInput | Step::Closed, _) => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        "TLS connection cannot send",
                    ))
                }
            }
        }
    }

    /// Read ciphertext from the socket after what is held.
    fn read_socket(&mut self, fd: RawFd) -> io::Result<Io> {
        if self.incoming.len() >= MAX_INCOMING {
            return Err(tls_error("TLS message too large"));
        }
        let r = sys::recv(fd, self.incoming.room(READ_SIZE))?;
        if let Io::Done(n) = r {
            self.incoming.commit(n);
        }
        Ok(r)
    }

    /// After an error: send the alert rustls queued, best effort.
    fn send_alert(&mut self, fd: RawFd) {
        let _ = self.step(&mut [], |_, _| {});
        let _ = self.flush(fd);
    }
}

/// Copy a record rustls made (handshake, alert, ticket, key update) into `out` (once:
/// `AlreadyEncoded` after that).
fn encode(e: &mut EncodeTlsData<'_, ServerConnectionData>, out: &mut Window) {
    let _ = out.fill(
        0,
        |room| e.encode(room),
        |err| match err {
            EncodeError::InsufficientSize(s) => Some(s.required_size),
            EncodeError::AlreadyEncoded => None,
        },
    );
}

/// The room an encryption that failed for want of it needs.
fn encrypt_needs(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(s) => Some(s.required_size),
        EncryptError::EncryptExhausted => None,
    }
}

impl Drop for TlsConn {
    fn drop(&mut self) {
        for (window, wipe) in [(&mut self.incoming, true), (&mut self.out, false)] {
            window.consume(window.len());
            window.release(wipe);
        }
    }
}

/// Encrypt parts into `out` up to [`ENCRYPT_AHEAD`] bytes of plaintext; small
/// neighbouring parts share a record.
fn encrypt_parts(
    w: &mut WriteTraffic<'_, ServerConnectionData>,
    out: &mut Window,
    parts: &[&[u8]],
) -> io::Result<usize> {
    let mut taken = 0;
    let mut small = [0u8; COALESCE];
    let mut small_len = 0;
    for part in parts {
        let left = ENCRYPT_AHEAD - taken - small_len;
        if left == 0 {
            break;
        }
        if part.len() <= COALESCE - small_len && part.len() <= left {
            small[small_len..small_len + part.len()].copy_from_slice(part);
            small_len += part.len();
            continue;
        }
        if small_len > 0 {
            encrypt(w, out, &small[..small_len])?;
            taken += small_len;
            small_len = 0;
        }
        let left = ENCRYPT_AHEAD - taken;
        let chunk = &part[..part.len().min(left)];
        encrypt(w, out, chunk)?;
        taken += chunk.len();
        if chunk.len() < part.len() {
            return Ok(taken);
        }
    }
    if small_len > 0 {
        encrypt(w, out, &small[..small_len])?;
        taken += small_len;
    }
    Ok(taken)
}

/// Encrypt one piece of plaintext (as many records as it needs) into `out`.
fn encrypt(
    w: &mut WriteTraffic<'_, ServerConnectionData>,
    out: &mut Window,
    plaintext: &[u8],
) -> io::Result<()> {
    // A record adds at most 29 bytes (TLS 1.2's explicit nonce and tag; 22 with TLS 1.3).
    let need = plaintext.len() + (plaintext.len() / (16 * 1024) + 1) * 32;
    out.fill(need, |room| w.encrypt(plaintext, room), encrypt_needs)
        .map_err(tls_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    /// A relay-side [`TlsConn`] and a rustls client over a socket pair, both non-blocking,
    /// with a certificate made for the test and the relay's own configuration.
    struct Pair {
        server: TlsConn,
        server_sock: UnixStream,
        client: rustls::ClientConnection,
        client_sock: UnixStream,
        _dir: tempfile::TempDir,
    }

    impl Pair {
        fn new() -> Pair {
            let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            std::fs::write(&cert, made.cert.pem()).unwrap();
            std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
            let tls = Tls::load(&TlsConfig {
                cert: Some(cert),
                key: Some(key),
            })
            .unwrap()
            .unwrap();
            let mut roots = rustls::RootCertStore::empty();
            roots.add(made.cert.der().clone()).unwrap();
            let client_config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            let client = rustls::ClientConnection::new(
                Arc::new(client_config),
                "localhost".try_into().unwrap(),
            )
            .unwrap();
            let (server_sock, client_sock) = UnixStream::pair().unwrap();
            server_sock.set_nonblocking(true).unwrap();
            client_sock.set_nonblocking(true).unwrap();
            Pair {
                server: TlsConn::new(tls.config()).unwrap(),
                server_sock,
                client,
                client_sock,
                _dir: dir,
            }
        }

        fn fd(&self) -> RawFd {
            self.server_sock.as_raw_fd()
        }

        /// Move the client's ciphertext both ways as far as the sockets allow; returns the
        /// plaintext the client received.
        fn pump_client(&mut self) -> Vec<u8> {
            while self.client.wants_write() {
                if self.client.write_tls(&mut self.client_sock).is_err() {
                    break;
                }
            }
            let mut got = Vec::new();
            loop {
                match self.client.read_tls(&mut self.client_sock) {
                    Ok(0) => break,
                    Ok(_) => {
                        self.client.process_new_packets().unwrap();
                        let mut buf = [0u8; 8192];
                        loop {
                            match self.client.reader().read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                                Err(_) => break,
                            }
                        }
                    }
                    Err(_) => break,
                }
            }
            got
        }

        fn handshake(&mut self) {
            for _ in 0..100 {
                self.pump_client();
                let step = self.server.handshake(self.fd()).unwrap();
                if step == Handshake::Complete && !self.client.is_handshaking() {
                    // The session tickets that followed.
                    self.pump_client();
                    return;
                }
            }
            panic!("the handshake did not complete");
        }
    }

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn records_cross_both_ways_and_no_buffer_stays_behind() {
        let mut p = Pair::new();
        p.handshake();
        assert_eq!(
            p.server.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );

        // Client to relay: two writes (several records), read 1,000 bytes at a time, so
        // that most records are read in pieces.
        let sent = [bytes(40_000, 1), b"a short one".to_vec()].concat();
        p.client.writer().write_all(&sent[..40_000]).unwrap();
        p.client.writer().write_all(&sent[40_000..]).unwrap();
        p.pump_client();
        let mut got = Vec::new();
        let mut buf = [0u8; 1000];
        loop {
            match p.server.recv(p.fd(), &mut buf).unwrap() {
                Io::Done(0) => panic!("end of stream"),
                Io::Done(n) => got.extend_from_slice(&buf[..n]),
                Io::WouldBlock => break,
            }
        }
        assert!(got == sent, "the relay read what the client sent");
        assert!(p.server.incoming.buf.is_empty() && p.server.plain.is_empty());

        // Relay to client: a frame head, a short message and a payload larger than one
        // write takes, in as many writes as it needs.
        let payload = bytes(300_001, 7);
        let parts: [&[u8]; 3] = [b"\x82\x7f", b"{\"meta\":1}", &payload];
        let expected: Vec<u8> = parts.concat();
        let mut at = 0;
        let mut received = Vec::new();
        while at < expected.len() {
            match p.server.write(p.fd(), &[&expected[at..]]).unwrap() {
                Io::Done(n) => {
                    assert!(n <= ENCRYPT_AHEAD);
                    at += n;
                }
                Io::WouldBlock => {}
            }
            received.extend(p.pump_client());
        }
        while !p.server.flush(p.fd()).unwrap() {
            received.extend(p.pump_client());
        }
        received.extend(p.pump_client());
        assert!(received == expected, "the client read what the relay wrote");
        assert!(
            !p.server.out.buf.is_empty(),
            "the write buffer stays while in use"
        );
        p.server.release();
        assert!(p.server.out.buf.is_empty() && !p.server.pending_output());

        // Both close: the client sees close_notify, the relay the end of the stream.
        p.server.close_notify();
        assert!(p.server.flush(p.fd()).unwrap());
        p.pump_client();
        assert!(p.client.process_new_packets().unwrap().peer_has_closed());
        p.client.send_close_notify();
        p.pump_client();
        assert!(matches!(
            p.server.recv(p.fd(), &mut buf).unwrap(),
            Io::Done(0)
        ));
    }

    #[test]
    fn small_parts_share_a_record() {
        let mut p = Pair::new();
        p.handshake();
        p.server.release();
        let parts: [&[u8]; 3] = [b"\x81\x05", b"hello", &[]];
        assert!(matches!(
            p.server.write(p.fd(), &parts).unwrap(),
            Io::Done(7)
        ));
        let mut wire = [0u8; 256];
        let n = (&p.client_sock).read(&mut wire).unwrap();
        // One TLS 1.3 record: 5 bytes of header, 7 of plaintext, its type byte, a 16-byte tag.
        assert_eq!(n, 5 + 7 + 1 + 16);
    }

    #[test]
    fn malformed_handshakes_fail_without_a_panic() {
        // A ClientHello announcing 128 KiB, and the start of a handshake message followed by
        // an alert record: rustls holds part of a message in our buffer when it fails.
        let inputs: [&[u8]; 2] = [
            b"\x16\x03\x01\x00\x04\x01\x02\x00\x00",
            b"\x16\x03\x01\x00\x01\x01\x15\x03\x01\x00\x02\x02\x28",
        ];
        for input in inputs {
            let mut p = Pair::new();
            (&p.client_sock).write_all(input).unwrap();
            assert!(p.server.handshake(p.fd()).is_err());
        }
    }

    #[test]
    fn a_connection_that_sends_nothing_holds_no_read_buffer() {
        let mut p = Pair::new();
        assert_eq!(p.server.handshake(p.fd()).unwrap(), Handshake::WantRead);
        assert!(p.server.incoming.buf.is_empty());
        // The first flight, then the client goes quiet: the buffer goes back.
        p.pump_client();
        assert_eq!(p.server.handshake(p.fd()).unwrap(), Handshake::WantRead);
        assert!(p.server.incoming.buf.is_empty());
    }

    #[test]
    fn a_partial_record_held_after_the_handshake_does_not_stop_writes() {
        // A TLS 1.3 KeyUpdate record without its last byte waits in our buffer for the
        // rest; writing (and close_notify) meanwhile goes on, and the rest completes it.
        let mut p = Pair::new();
        p.handshake();
        p.client.refresh_traffic_keys().unwrap();
        let mut wire = Vec::new();
        while p.client.wants_write() {
            p.client.write_tls(&mut wire).unwrap();
        }
        // The KeyUpdate is one encrypted record: send all of it but its last byte.
        (&p.client_sock).write_all(&wire[..wire.len() - 1]).unwrap();
        let mut buf = [0u8; 64];
        assert!(matches!(
            p.server.recv(p.fd(), &mut buf).unwrap(),
            Io::WouldBlock
        ));
        assert!(matches!(
            p.server.write(p.fd(), &[b"after"]).unwrap(),
            Io::Done(5)
        ));
        p.server.close_notify();
        assert!(p.server.flush(p.fd()).unwrap());
        (&p.client_sock).write_all(&wire[wire.len() - 1..]).unwrap();
        assert_eq!(p.pump_client(), b"after");
        assert!(matches!(
            p.server.recv(p.fd(), &mut buf).unwrap(),
            Io::WouldBlock
        ));
    }

    #[test]
    fn plain_http_is_not_a_handshake() {
        let mut p = Pair::new();
        (&p.client_sock)
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert!(p.server.handshake(p.fd()).is_err());
    }
}
