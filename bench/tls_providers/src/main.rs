//! ring vs aws-lc-rs under rustls, in memory (no sockets): full TLS 1.3 handshakes per
//! second (server and client in one thread, so the figure is the pair's cost), and the
//! server's cost of encrypting 1 GiB of application data in 16 KiB records.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Instant;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

fn configs(
    provider: Arc<CryptoProvider>,
) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let der = CertificateDer::from(cert.cert.der().to_vec());
    let key = PrivateKeyDer::try_from(cert.key_pair.serialize_der()).expect("key");
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .expect("server config");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).expect("root");
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.resumption = rustls::client::Resumption::disabled();
    (Arc::new(server), Arc::new(client))
}

/// Move every pending TLS byte from `a` to `b` and back until neither has anything to send.
fn transfer(c: &mut rustls::ClientConnection, s: &mut rustls::ServerConnection) {
    loop {
        let mut moved = false;
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).expect("client write");
        }
        if !buf.is_empty() {
            moved = true;
            s.read_tls(&mut &buf[..]).expect("server read");
            s.process_new_packets().expect("server process");
        }
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).expect("server write");
        }
        if !buf.is_empty() {
            moved = true;
            let mut rest = &buf[..];
            while !rest.is_empty() {
                c.read_tls(&mut rest).expect("client read");
                c.process_new_packets().expect("client process");
            }
        }
        if !moved {
            return;
        }
    }
}

fn handshakes(
    server: &Arc<rustls::ServerConfig>,
    client: &Arc<rustls::ClientConfig>,
    n: usize,
) -> f64 {
    let started = Instant::now();
    for _ in 0..n {
        let mut c = rustls::ClientConnection::new(
            client.clone(),
            ServerName::try_from("localhost").expect("name"),
        )
        .expect("client");
        let mut s = rustls::ServerConnection::new(server.clone()).expect("server");
        transfer(&mut c, &mut s);
        assert!(!c.is_handshaking() && !s.is_handshaking());
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Seconds of the server's encryption (and record copying) per GB sent.
fn seal(
    server: &Arc<rustls::ServerConfig>,
    client: &Arc<rustls::ClientConfig>,
    suite: rustls::CipherSuite,
) -> f64 {
    let mut c = rustls::ClientConnection::new(
        client.clone(),
        ServerName::try_from("localhost").expect("name"),
    )
    .expect("client");
    let mut s = rustls::ServerConnection::new(server.clone()).expect("server");
    transfer(&mut c, &mut s);
    assert_eq!(s.negotiated_cipher_suite().map(|x| x.suite()), Some(suite));
    let chunk = vec![7u8; 1 << 20];
    let total = 1usize << 30;
    let mut sink = Vec::with_capacity(2 << 20);
    let started = Instant::now();
    let mut sent = 0;
    while sent < total {
        let n = s.writer().write(&chunk).expect("write");
        while s.wants_write() {
            sink.clear();
            s.write_tls(&mut sink).expect("write_tls");
        }
        sent += n;
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = c.reader().read(&mut [0u8; 1]);
    secs / (total as f64 / 1e9)
}

/// The key exchange group a handshake negotiates.
fn s_kx(
    server: &Arc<rustls::ServerConfig>,
    client: &Arc<rustls::ClientConfig>,
) -> Option<rustls::NamedGroup> {
    let mut c = rustls::ClientConnection::new(
        client.clone(),
        ServerName::try_from("localhost").expect("name"),
    )
    .expect("client");
    let mut s = rustls::ServerConnection::new(server.clone()).expect("server");
    transfer(&mut c, &mut s);
    s.negotiated_key_exchange_group().map(|g| g.name())
}

fn with_suite(p: CryptoProvider, suite: rustls::CipherSuite) -> Arc<CryptoProvider> {
    let mut p = p;
    p.cipher_suites.retain(|s| s.suite() == suite);
    Arc::new(p)
}

fn main() {
    let providers: [(&str, fn() -> CryptoProvider); 2] = [
        ("ring", rustls::crypto::ring::default_provider),
        ("aws-lc-rs", rustls::crypto::aws_lc_rs::default_provider),
    ];
    for (name, make) in providers {
        // The same key exchange for both: X25519 (what browsers and the load client offer
        // first; aws-lc-rs would otherwise pick its post-quantum hybrid).
        let mut p = make();
        p.kx_groups
            .retain(|g| g.name() == rustls::NamedGroup::X25519);
        let (server, client) = configs(Arc::new(p));
        let hs: Vec<f64> = (0..3).map(|_| handshakes(&server, &client, 2000)).collect();
        print!("{name:>10}: full TLS 1.3 handshakes (client + server, one thread): {:.0}/s (3 runs: {:?})", median(&hs), hs.iter().map(|h| h.round()).collect::<Vec<_>>());
        println!("; key exchange {:?}", s_kx(&server, &client));
        for suite in [
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
        ] {
            let (server, client) = configs(with_suite(make(), suite));
            let cost: Vec<f64> = (0..3).map(|_| seal(&server, &client, suite)).collect();
            println!(
                "{name:>10}: {suite:?}: {:.3} s per GB sealed (3 runs: {:?})",
                median(&cost),
                cost.iter()
                    .map(|c| (c * 1000.0).round() / 1000.0)
                    .collect::<Vec<_>>()
            );
        }
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).expect("number"));
    v[v.len() / 2]
}
