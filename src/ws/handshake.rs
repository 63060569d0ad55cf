//! The server side of the WebSocket opening handshake: validating the upgrade request's
//! headers and computing `Sec-WebSocket-Accept`.

use base64::Engine;
use sha1::{Digest, Sha1};

const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why an upgrade request is not a valid WebSocket handshake.
#[derive(Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// Missing or wrong `Upgrade`/`Connection`/`Sec-WebSocket-Key`: 400.
    BadRequest(&'static str),
    /// `Sec-WebSocket-Version` other than 13: 426 with `Sec-WebSocket-Version: 13`.
    UnsupportedVersion,
}

fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Check the handshake headers and return the `Sec-WebSocket-Accept` value.
pub fn accept(headers: &[httparse::Header<'_>]) -> Result<String, HandshakeError> {
    let get = |name: &str| {
        headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    if !get("upgrade").is_some_and(|v| has_token(v, "websocket")) {
        return Err(HandshakeError::BadRequest("missing Upgrade: websocket"));
    }
    if !get("connection").is_some_and(|v| has_token(v, "upgrade")) {
        return Err(HandshakeError::BadRequest("missing Connection: Upgrade"));
    }
    if get("sec-websocket-version").map(|v| v.trim_ascii()) != Some(b"13") {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let key = get("sec-websocket-key")
        .map(|v| v.trim_ascii())
        .ok_or(HandshakeError::BadRequest("missing Sec-WebSocket-Key"))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| HandshakeError::BadRequest("Sec-WebSocket-Key is not base64"))?;
    if decoded.len() != 16 {
        return Err(HandshakeError::BadRequest(
            "Sec-WebSocket-Key is not 16 bytes",
        ));
    }
    Ok(accept_key(key))
}

/// `base64(SHA-1(key ++ GUID))`.
pub fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn header_checks() {
        let h = |pairs: &[(&'static str, &'static str)]| -> Vec<httparse::Header<'static>> {
            pairs
                .iter()
                .map(|(n, v)| httparse::Header {
                    name: n,
                    value: v.as_bytes(),
                })
                .collect()
        };
        let ok = h(&[
            ("Upgrade", "WebSocket"),
            ("Connection", "keep-alive, Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        assert!(accept(&ok).is_ok());
        let old = h(&[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "8"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        assert_eq!(accept(&old), Err(HandshakeError::UnsupportedVersion));
        let nokey = h(&[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
        ]);
        assert!(matches!(accept(&nokey), Err(HandshakeError::BadRequest(_))));
        assert!(matches!(accept(&[]), Err(HandshakeError::BadRequest(_))));
    }
}
