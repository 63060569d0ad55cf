//! The load client's byte stream: plain TCP, or TLS with rustls (`--tls`, trusting the CA
//! in `--ca`) driven over the same monoio socket. TLS here is for measuring the server: the
//! client's own copies are not optimised.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls_pki_types::pem::PemObject;

/// How to open TLS connections.
#[derive(Clone)]
pub struct TlsClient {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl TlsClient {
    /// Trust the CA certificates in the PEM file `ca`, ask for `server_name`; `resume`:
    /// offer session resumption (tickets) on later connections.
    pub fn new(ca: &std::path::Path, server_name: &str, resume: bool) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca)? {
            roots.add(cert?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        if !resume {
            config.resumption = rustls::client::Resumption::disabled();
        }
        Ok(TlsClient {
            config: Arc::new(config),
            server_name: ServerName::try_from(server_name.to_string())?,
        })
    }
}

/// A connection: plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<Tls>),
}

/// A TLS connection: the socket, rustls, and a buffer for ciphertext read.
pub struct Tls {
    tcp: TcpStream,
    conn: rustls::ClientConnection,
    /// Ciphertext read from the socket; `rbuf[pos..]` is not yet handed to rustls (which
    /// takes more only once its plaintext has been read).
    rbuf: Vec<u8>,
    pos: usize,
    /// Plaintext rustls holds, not yet read.
    buffered: usize,
}

impl Stream {
    /// Connect to `addr`, with the TLS handshake when `tls` is given.
    pub async fn connect(addr: &str, tls: Option<&TlsClient>) -> io::Result<Stream> {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        let Some(t) = tls else {
            return Ok(Stream::Plain(tcp));
        };
        let conn = rustls::ClientConnection::new(t.config.clone(), t.server_name.clone())
            .map_err(io::Error::other)?;
        let mut s = Tls {
            tcp,
            conn,
            rbuf: Vec::with_capacity(32 << 10),
            pos: 0,
            buffered: 0,
        };
        while s.conn.is_handshaking() {
            s.flush().await?;
            if !s.conn.is_handshaking() {
                break;
            }
            if s.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed during the TLS handshake",
                ));
            }
        }
        s.flush().await?;
        Ok(Stream::Tls(Box::new(s)))
    }

    pub fn fd(&self) -> RawFd {
        match self {
            Stream::Plain(s) => s.as_raw_fd(),
            Stream::Tls(t) => t.tcp.as_raw_fd(),
        }
    }

    /// Write all of `data` (encrypted first with TLS).
    pub async fn write_all(&mut self, data: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self {
            Stream::Plain(s) => s.write_all(data).await,
            Stream::Tls(t) => {
                if let Err(e) = t.conn.writer().write_all(&data) {
                    return (Err(e), data);
                }
                match t.flush().await {
                    Ok(()) => (Ok(data.len()), data),
                    Err(e) => (Err(e), data),
                }
            }
        }
    }

    /// Read into the spare capacity of `buf` (appending, as monoio's `read` does); 0 at the
    /// end of the stream.
    pub async fn read(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(t) => {
                let at = buf.len();
                let room = (buf.capacity() - at).max(16 << 10);
                loop {
                    buf.resize(at + room, 0);
                    let got = t.conn.reader().read(&mut buf[at..]);
                    match got {
                        Ok(n) => {
                            buf.truncate(at + n);
                            t.buffered = t.buffered.saturating_sub(n);
                            return (Ok(n), buf);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => buf.truncate(at),
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                            buf.truncate(at);
                            return (Ok(0), buf);
                        }
                        Err(e) => {
                            buf.truncate(at);
                            return (Err(e), buf);
                        }
                    }
                    match t.fill().await {
                        Ok(0) => return (Ok(0), buf),
                        Ok(_) => {}
                        Err(e) => return (Err(e), buf),
                    }
                    if let Err(e) = t.flush().await {
                        return (Err(e), buf);
                    }
                }
            }
        }
    }

    /// Wait until a read would not block (TLS: at once when rustls holds plaintext).
    pub async fn readable(&mut self, relaxed: bool) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.readable(relaxed).await,
            Stream::Tls(t) if t.buffered > 0 || t.pos < t.rbuf.len() => Ok(()),
            Stream::Tls(t) => t.tcp.readable(relaxed).await,
        }
    }
}

impl Tls {
    /// Hand ciphertext to rustls: what is left from the last socket read, else a new read.
    /// Returns 0 when the socket is closed, else how many bytes rustls took (at least 1).
    async fn fill(&mut self) -> io::Result<usize> {
        if self.pos >= self.rbuf.len() {
            let mut buf = std::mem::take(&mut self.rbuf);
            buf.clear();
            self.pos = 0;
            let (r, buf) = self.tcp.read(buf).await;
            self.rbuf = buf;
            if r? == 0 {
                return Ok(0);
            }
        }
        let mut fed = 0;
        while self.pos < self.rbuf.len() {
            let mut rest = &self.rbuf[self.pos..];
            match self.conn.read_tls(&mut rest) {
                Ok(0) => break,
                Ok(n) => {
                    self.pos += n;
                    fed += n;
                }
                // rustls holds as much plaintext as it will: read that first.
                Err(_) if fed > 0 || self.buffered > 0 => break,
                Err(e) => return Err(e),
            }
            let state = self
                .conn
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            self.buffered = state.plaintext_bytes_to_read();
            if self.buffered > 0 {
                break;
            }
        }
        Ok(fed.max(1))
    }

    /// Write what rustls has to send.
    async fn flush(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            let mut out = Vec::with_capacity(16 << 10);
            self.conn.write_tls(&mut out)?;
            let (r, _) = self.tcp.write_all(out).await;
            r?;
        }
        Ok(())
    }
}
