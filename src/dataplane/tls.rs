//! TLS on the public listener (PROTOCOL.md v1.1): the rustls server configuration made from
//! `[tls]` (PEM certificate chain and key; TLS 1.3 and 1.2, ALPN `http/1.1`, ring as the
//! crypto provider, session resumption with tickets), swapped whole on SIGHUP so new
//! connections use the new certificate while open ones keep theirs.
//!
//! The connection side is [`super::socket::Socket`]; this module only builds and holds the
//! configuration.

use std::path::Path;
use std::sync::Arc;

use rustls::server::ProducesTickets;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

/// Ciphertext a connection may hold unsent before it stops taking plaintext (the send
/// queue keeps the rest, where the slow-consumer policy sees it).
pub const PENDING_CIPHERTEXT: usize = 64 << 10;

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
