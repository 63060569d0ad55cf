//! Firestore documents as ticket records: the wire type of a document (`Document`), its
//! decoding by PROTOCOL.md's ticket table into a [`Decoded`] record, and [`DecodeError`],
//! why a document is malformed (logged, and the document skipped).

use std::time::SystemTime;

use serde::Deserialize;
use serde_json::Value;

use crate::tickets::{parse_id_hex, TicketId, TicketRecord};

/// A decoded ticket document.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub id: TicketId,
    pub record: TicketRecord,
    /// `updatedAt` exactly as stored (nanosecond precision, for the sync cursor).
    pub updated_raw: String,
    pub name: String,
}

/// A document as the REST API returns it (only what decoding needs).
#[derive(Deserialize)]
pub(super) struct Document {
    pub(super) name: String,
    #[serde(default)]
    pub(super) fields: serde_json::Map<String, Value>,
}

/// Why a document is not a valid ticket; the Display text is what the skip log line says.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The document's id (last part of its name) is not a ticket id.
    #[error("document id is not a lowercase SHA-256 hex string")]
    BadId,
    /// A required field is absent.
    #[error("`{0}` is missing")]
    Missing(&'static str),
    /// A field is not a Firestore value object (`{"stringValue": ...}` and the like).
    #[error("`{0}` is not a Firestore value")]
    NotAValue(&'static str),
    /// A field holds another kind of Firestore value than `kind` (e.g. `stringValue`).
    #[error("`{field}` must be a {kind}")]
    WrongKind {
        field: &'static str,
        kind: &'static str,
    },
    /// A field's value has the wrong type or range; `expected` completes "must ...".
    #[error("`{field}` must {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    /// A timestamp field that RFC 3339 parsing rejects.
    #[error("`{field}`: {source}")]
    BadTimestamp {
        field: &'static str,
        source: humantime::TimestampError,
    },
}

/// `field` must `expected` ("be a string", ...).
fn wrong(field: &'static str, expected: &'static str) -> DecodeError {
    DecodeError::WrongType { field, expected }
}

/// `decode`, logging and skipping a malformed document.
pub(super) fn decode_logged(doc: Document) -> Option<Decoded> {
    match decode(&doc) {
        Ok(d) => Some(d),
        Err(why) => {
            tracing::warn!(document = %doc.name, "skipping malformed ticket document: {why}");
            None
        }
    }
}

/// Turn a Firestore document into a ticket record (PROTOCOL.md's ticket table).
/// Decode one document from its REST JSON (`{"name": ..., "fields": {...}}`): what the
/// sync does with each document it reads (also the fuzzing entry point).
pub fn decode_json(json: &[u8]) -> Result<Decoded, DecodeError> {
    let doc: Document =
        serde_json::from_slice(json).map_err(|_| DecodeError::NotAValue("document"))?;
    decode(&doc)
}

fn decode(doc: &Document) -> Result<Decoded, DecodeError> {
    let id_str = doc.name.rsplit('/').next().unwrap_or_default();
    let id = parse_id_hex(id_str).ok_or(DecodeError::BadId)?;
    let field = |name: &'static str, kind: &'static str| -> Result<Option<&Value>, DecodeError> {
        match doc.fields.get(name) {
            None => Ok(None),
            Some(Value::Object(v)) => match v.get(kind) {
                Some(x) if v.len() == 1 => Ok(Some(x)),
                _ => Err(DecodeError::WrongKind { field: name, kind }),
            },
            Some(_) => Err(DecodeError::NotAValue(name)),
        }
    };
    let need = |name: &'static str, kind: &'static str| -> Result<&Value, DecodeError> {
        field(name, kind)?.ok_or(DecodeError::Missing(name))
    };
    let ts = |name: &'static str| -> Result<(SystemTime, String), DecodeError> {
        let s = need(name, "timestampValue")?
            .as_str()
            .ok_or_else(|| wrong(name, "be a timestamp string"))?;
        let t = humantime::parse_rfc3339_weak(s).map_err(|source| DecodeError::BadTimestamp {
            field: name,
            source,
        })?;
        Ok((t, s.to_string()))
    };
    let uid = need("uid", "stringValue")?
        .as_str()
        .ok_or_else(|| wrong("uid", "be a string"))?
        .to_string();
    let strings = |name: &'static str, v: &Value| -> Result<Vec<String>, DecodeError> {
        match v {
            Value::Object(a) => match a.get("values") {
                None => Ok(Vec::new()),
                Some(Value::Array(vals)) => vals
                    .iter()
                    .map(|v| {
                        v.get("stringValue")
                            .and_then(Value::as_str)
                            .map(str::to_string)
                            .ok_or_else(|| wrong(name, "hold strings"))
                    })
                    .collect(),
                Some(_) => Err(wrong(name, "be an array")),
            },
            _ => Err(wrong(name, "be an array")),
        }
    };
    let streams = strings("streams", need("streams", "arrayValue")?)?;
    let publish = match field("publish", "arrayValue")? {
        None => Vec::new(),
        Some(v) => strings("publish", v)?,
    };
    let (expires_at, _) = ts("expiresAt")?;
    let (updated_at, updated_raw) = ts("updatedAt")?;
    let revoked = match field("revoked", "booleanValue")? {
        None => false,
        Some(v) => v.as_bool().ok_or_else(|| wrong("revoked", "be a bool"))?,
    };
    let max_connections = match field("maxConnections", "integerValue")? {
        None => None,
        Some(v) => Some(
            v.as_str()
                .and_then(|s| s.parse::<u32>().ok())
                .ok_or_else(|| wrong("maxConnections", "be an integer string from 0 to 2^32-1"))?,
        ),
    };
    Ok(Decoded {
        id,
        record: TicketRecord {
            uid,
            streams,
            expires_at,
            revoked,
            max_connections,
            publish,
            updated_at,
        },
        updated_raw,
        name: doc.name.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(fields: Value) -> Document {
        Document {
            name: format!(
                "projects/p/databases/(default)/documents/tickets/{}",
                "a".repeat(64)
            ),
            fields: fields.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn documents_decode() {
        let d = decode(&doc(json!({
            "uid": {"stringValue": "alice"},
            "streams": {"arrayValue": {"values": [{"stringValue": "live/*"}]}},
            "expiresAt": {"timestampValue": "2030-01-01T00:00:00Z"},
            "updatedAt": {"timestampValue": "2026-11-24T15:00:00.123456789Z"},
            "revoked": {"booleanValue": true},
            "maxConnections": {"integerValue": "3"},
            "publish": {"arrayValue": {"values": [{"stringValue": "live/cam1"}]}}
        })))
        .unwrap();
        assert_eq!(d.record.publish, vec!["live/cam1"]);
        assert_eq!(d.record.uid, "alice");
        assert_eq!(d.record.streams, vec!["live/*"]);
        assert!(d.record.revoked);
        assert_eq!(d.record.max_connections, Some(3));
        assert_eq!(d.updated_raw, "2026-11-24T15:00:00.123456789Z");
        // An empty array is `{}`; optional fields may be absent.
        let d = decode(&doc(json!({
            "uid": {"stringValue": "bob"},
            "streams": {"arrayValue": {}},
            "expiresAt": {"timestampValue": "2030-01-01T00:00:00Z"},
            "updatedAt": {"timestampValue": "2026-11-24T15:00:00Z"}
        })))
        .unwrap();
        assert!(d.record.streams.is_empty() && !d.record.revoked);
        for bad in [
            json!({"uid": {"stringValue": "x"}}),
            json!({"uid": {"integerValue": "1"}, "streams": {"arrayValue": {}},
                   "expiresAt": {"timestampValue": "2030-01-01T00:00:00Z"},
                   "updatedAt": {"timestampValue": "2026-11-24T15:00:00Z"}}),
            json!({"uid": {"stringValue": "x"}, "streams": {"arrayValue": {"values": [{"integerValue": "1"}]}},
                   "expiresAt": {"timestampValue": "2030-01-01T00:00:00Z"},
                   "updatedAt": {"timestampValue": "2026-11-24T15:00:00Z"}}),
            json!({"uid": {"stringValue": "x"}, "streams": {"arrayValue": {}},
                   "expiresAt": {"timestampValue": "soon"},
                   "updatedAt": {"timestampValue": "2026-11-24T15:00:00Z"}}),
            json!({"uid": {"stringValue": "x"}, "streams": {"arrayValue": {}},
                   "expiresAt": {"timestampValue": "2030-01-01T00:00:00Z"},
                   "updatedAt": {"timestampValue": "2026-11-24T15:00:00Z"},
                   "maxConnections": {"integerValue": 3}}),
        ] {
            assert!(decode(&doc(bad.clone())).is_err(), "{bad}");
        }
        let mut wrong_id = doc(json!({}));
        wrong_id.name = "projects/p/databases/(default)/documents/tickets/NOTHEX".into();
        let e = decode(&wrong_id).unwrap_err();
        assert_eq!(e, DecodeError::BadId);
        assert!(e.to_string().contains("SHA-256"));
    }
}
