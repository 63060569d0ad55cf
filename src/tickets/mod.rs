//! Tickets: the bearer credentials clients present before the WebSocket upgrade.
//!
//! A ticket store ([`TicketStore`]: the JSON file by default) is read by the control plane
//! into an immutable [`snapshot::Snapshot`] that is swapped in atomically. Workers only
//! read the current snapshot: a lookup is a SHA-256 and a hash-map probe, with no lock, no
//! I/O and no allocation. The ticket string itself is never stored, logged or echoed;
//! records are keyed by its SHA-256 and carry the `uid` that logs show instead.

pub mod admission;
pub mod file;
pub mod firestore;
pub mod limits;
pub mod snapshot;

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A ticket id: the SHA-256 of the ticket string.
pub type TicketId = [u8; 32];

/// What a ticket grants, as stored (PROTOCOL.md's ticket table). Fields the table does not
/// list are ignored, so the systems that write tickets may keep their own beside them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TicketRecord {
    /// The user it was issued to.
    pub uid: String,
    /// Stream patterns it may read.
    pub streams: Vec<String>,
    /// Not valid at or after this instant.
    #[serde(with = "rfc3339")]
    pub expires_at: SystemTime,
    /// Revoked tickets are never valid.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
    /// Most concurrent connections with this ticket on one relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Key patterns it may write through ingest (same rules as `streams`; none if absent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
    /// Last write.
    #[serde(with = "rfc3339")]
    pub updated_at: SystemTime,
}

/// Why a ticket was refused; each maps to a 401/429/503 answer of docs/protocol.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Invalid,
    Expired,
    Revoked,
    TooManyConnections,
    RateLimited,
    /// The ticket is not in the snapshot and the store could not be asked: retry.
    Unavailable,
    /// The relay holds its most connections (checked before the ticket): retry.
    Overloaded,
}

impl Refusal {
    /// The `error` value of the JSON body, also the upgrade metric's label.
    pub fn code(self) -> &'static str {
        self.status_and_code().1
    }

    /// HTTP status and the `error` value of the JSON body.
    pub fn status_and_code(self) -> (u16, &'static str) {
        match self {
            Refusal::Missing => (401, "ticket_missing"),
            Refusal::Invalid => (401, "ticket_invalid"),
            Refusal::Expired => (401, "ticket_expired"),
            Refusal::Revoked => (401, "ticket_revoked"),
            Refusal::TooManyConnections => (429, "too_many_connections"),
            Refusal::RateLimited => (429, "rate_limited"),
            Refusal::Unavailable => (503, "tickets_unavailable"),
            Refusal::Overloaded => (503, "overloaded"),
        }
    }
}

impl TicketRecord {
    /// Whether the record is usable at `now`.
    pub fn validity(&self, now: SystemTime) -> Result<(), Refusal> {
        if self.revoked {
            Err(Refusal::Revoked)
        } else if now >= self.expires_at {
            Err(Refusal::Expired)
        } else {
            Ok(())
        }
    }

    /// Whether the ticket covers object `key`.
    pub fn covers_key(&self, key: &str) -> bool {
        self.streams.iter().any(|p| pattern_covers_key(p, key))
    }

    /// Whether the ticket may publish (ingest) object `key`.
    pub fn covers_publish(&self, key: &str) -> bool {
        self.publish.iter().any(|p| pattern_covers_key(p, key))
    }

    /// Whether the ticket covers stream `stream` (every key under `stream/`).
    pub fn covers_stream(&self, stream: &str) -> bool {
        self.streams
            .iter()
            .any(|p| pattern_covers_stream(p, stream))
    }
}

/// PROTOCOL.md: `*` covers all; `p*` is a plain prefix; anything else is a path that
/// covers itself and every key below it.
pub fn pattern_covers_key(pattern: &str, key: &str) -> bool {
    if let Some(prefix) = pattern.strip_suffix('*') {
        key.starts_with(prefix)
    } else {
        key == pattern
            || (key.len() > pattern.len()
                && key.starts_with(pattern)
                && key.as_bytes()[pattern.len()] == b'/')
    }
}

/// A pattern covers stream `S` when it covers every key under `S/`.
pub fn pattern_covers_stream(pattern: &str, stream: &str) -> bool {
    if let Some(prefix) = pattern.strip_suffix('*') {
        // Every key under S/ starts with `S/`, so it is covered when `S/` starts with the
        // prefix.
        stream.len() + 1 >= prefix.len()
            && stream
                .as_bytes()
                .iter()
                .chain(b"/")
                .zip(prefix.as_bytes())
                .all(|(a, b)| a == b)
    } else {
        pattern_covers_key(pattern, stream)
    }
}

/// The id of a ticket string.
pub fn ticket_id(ticket: &str) -> TicketId {
    Sha256::digest(ticket.as_bytes()).into()
}

/// Lowercase hex of an id (the store's document id).
pub fn id_hex(id: &TicketId) -> String {
    hex::encode(id)
}

/// Parse a hex id.
pub fn parse_id_hex(s: &str) -> Option<TicketId> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    (s.bytes().all(|b| !b.is_ascii_uppercase())).then_some(out)
}

/// A new random ticket: 32 bytes from the OS, base64url without padding.
pub fn new_ticket() -> std::io::Result<String> {
    use base64::Engine;
    let mut raw = [0u8; 32];
    getrandom::getrandom(&mut raw).map_err(std::io::Error::other)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
}

/// Errors of a ticket store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Malformed(String),
    #[error("no ticket with id {0}")]
    NotFound(String),
}

/// A place tickets are kept, as the `ticket` CLI sees it. (Serving reads the store through
/// the control plane, which keeps the snapshot current.)
pub trait TicketStore: Send + Sync {
    /// Where it is, for logs.
    fn describe(&self) -> String;
    /// Add a record.
    fn insert(&self, id: TicketId, record: TicketRecord) -> Result<(), StoreError>;
    /// Mark a record revoked (and bump `updatedAt`).
    fn revoke(&self, id: TicketId) -> Result<(), StoreError>;
    /// All records.
    fn list(&self) -> Result<Vec<(TicketId, TicketRecord)>, StoreError>;
}

/// Open the store a `--tickets` value names: a JSON file, or `firestore://...`.
pub fn open_store(url: &str) -> Result<Box<dyn TicketStore>, StoreError> {
    if url.starts_with("firestore://") {
        return Ok(Box::new(firestore::FirestoreStore::open(url)?));
    }
    let path = url.strip_prefix("file://").unwrap_or(url);
    Ok(Box::new(file::FileStore::new(path.into())))
}

/// What a point lookup found.
#[derive(Debug, Clone)]
pub enum Found {
    /// The store has this record.
    Record(std::sync::Arc<TicketRecord>),
    /// The store answered that it has no such ticket.
    Missing,
    /// The store could not be asked (down, timed out, lookup budget spent): the ticket is
    /// neither valid nor invalid as far as the relay knows.
    Unavailable,
}

/// Boxed future of a point lookup.
pub type LookupFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Found>>>;

/// Looks up a ticket missing from the snapshot (off the hot path, bounded).
pub trait Lookup: Send + Sync {
    /// What the store says about `id`.
    fn find(&self, id: TicketId) -> LookupFuture;
}

/// RFC 3339 timestamps in serde.
pub mod rfc3339 {
    use std::time::SystemTime;

    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_micros(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        humantime::parse_rfc3339_weak(&s)
            .map_err(|e| de::Error::custom(format!("`{s}` is not an RFC 3339 timestamp ({e})")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_patterns() {
        assert!(pattern_covers_key("live/cam1", "live/cam1"));
        assert!(pattern_covers_key(
            "live/cam1",
            "live/cam1/seg-0000000001.m4s"
        ));
        assert!(!pattern_covers_key(
            "live/cam1",
            "live/cam10/seg-0000000001.m4s"
        ));
        assert!(!pattern_covers_key("live/cam1", "live/cam"));
        assert!(pattern_covers_stream("live/cam1", "live/cam1"));
        assert!(pattern_covers_stream("live", "live/cam1"));
        assert!(!pattern_covers_stream("live/cam1", "live/cam10"));
        assert!(!pattern_covers_stream("live/cam1", "live"));
    }

    #[test]
    fn prefix_patterns() {
        assert!(pattern_covers_key("vod/*", "vod/a/b"));
        assert!(!pattern_covers_key("vod/*", "vo"));
        assert!(pattern_covers_key("*", "anything/at/all"));
        assert!(pattern_covers_stream("*", "x"));
        assert!(pattern_covers_stream("vod/*", "vod"));
        assert!(pattern_covers_stream("vod/*", "vod/movie"));
        assert!(!pattern_covers_stream("vod/*", "vo"));
        assert!(pattern_covers_stream("live/cam*", "live/cam10"));
        assert!(!pattern_covers_stream("live/cam1/x*", "live/cam1"));
    }

    #[test]
    fn validity() {
        let now = SystemTime::now();
        let mut r = TicketRecord {
            uid: "u".into(),
            streams: vec![],
            expires_at: now + std::time::Duration::from_secs(10),
            revoked: false,
            max_connections: None,
            publish: Vec::new(),
            updated_at: now,
        };
        assert_eq!(r.validity(now), Ok(()));
        assert_eq!(r.validity(r.expires_at), Err(Refusal::Expired));
        r.revoked = true;
        assert_eq!(r.validity(now), Err(Refusal::Revoked));
    }

    #[test]
    fn ids() {
        let t = new_ticket().unwrap();
        assert_eq!(t.len(), 43);
        assert!(!t.contains('='));
        let id = ticket_id(&t);
        assert_eq!(parse_id_hex(&id_hex(&id)), Some(id));
        assert_eq!(parse_id_hex("zz"), None);
        assert_eq!(
            id_hex(&ticket_id("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
