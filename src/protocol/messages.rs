//! Control messages of the wire contract (docs/protocol.md): parsing what clients send and
//! encoding what the relay answers. Pure functions on byte strings, no I/O.
//!
//! Client messages are parsed with simd-json in place (the frame payload is ours to
//! mutate). Every malformed message maps to a [`Request::Bad`] carrying the `id` when one
//! could be read, so the reply can echo it and the connection stays usable.

use serde::Serialize;
use simd_json::prelude::*;
use simd_json::BorrowedValue;

use super::close::Reason;
use super::errors::ErrorCode;
use super::keys::{validate_key, validate_stream};

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// The newest complete segment (or the next one).
    Live,
    /// Sequence 1, or the oldest still in storage.
    Start,
    /// This sequence number.
    Seq(u64),
}

/// A parsed client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Get {
        id: u32,
        key: String,
    },
    Subscribe {
        id: u32,
        stream: String,
        from: From,
    },
    Unsubscribe {
        id: u32,
        stream: String,
    },
    /// Replace the connection's ticket with a newer one of the same user.
    Refresh {
        id: u32,
        ticket: String,
    },
    /// A message the relay cannot act on: answered with `error`/`bad_request`.
    Bad {
        id: Option<u32>,
        message: String,
    },
}

fn bad(id: Option<u32>, message: impl Into<String>) -> Request {
    Request::Bad {
        id,
        message: message.into(),
    }
}

/// Parse one text message. `buf` is clobbered (simd-json parses in place).
pub fn parse(buf: &mut [u8]) -> Request {
    let value = match simd_json::to_borrowed_value(buf) {
        Ok(v) => v,
        Err(_) => return bad(None, "message is not valid JSON"),
    };
    let Some(obj) = value.as_object() else {
        return bad(None, "message is not a JSON object");
    };
    let id = match obj.get("id") {
        None => None,
        Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) => Some(n),
            None => return bad(None, "`id` must be an unsigned 32-bit integer"),
        },
    };
    let op = match obj.get("op").map(|v| v.as_str()) {
        Some(Some(op)) => op,
        Some(None) => return bad(id, "`op` must be a string"),
        None => return bad(id, "`op` is missing"),
    };
    let str_field = |name: &str| -> Result<String, Request> {
        match obj.get(name) {
            Some(BorrowedValue::String(s)) => Ok(s.to_string()),
            Some(_) => Err(bad(id, format!("`{name}` must be a string"))),
            None => Err(bad(id, format!("`{name}` is missing"))),
        }
    };
    let need_id = || id.ok_or_else(|| bad(None, "`id` is missing"));
    let result = (|| match op {
        "get" => {
            let id = need_id()?;
            let key = str_field("key")?;
            validate_key(&key).map_err(|why| bad(Some(id), why))?;
            Ok(Request::Get { id, key })
        }
        "subscribe" => {
            let id = need_id()?;
            let stream = str_field("stream")?;
            validate_stream(&stream).map_err(|why| bad(Some(id), format!("stream: {why}")))?;
            let from = match obj.get("from") {
                None => From::Live,
                Some(v) => match (v.as_str(), v.as_u64()) {
                    (Some("live"), _) => From::Live,
                    (Some("start"), _) => From::Start,
                    (None, Some(n)) => From::Seq(n),
                    _ => {
                        return Err(bad(
                            Some(id),
                            "`from` must be \"live\", \"start\" or a sequence number",
                        ))
                    }
                },
            };
            Ok(Request::Subscribe { id, stream, from })
        }
        "unsubscribe" => {
            let id = need_id()?;
            let stream = str_field("stream")?;
            Ok(Request::Unsubscribe { id, stream })
        }
        "refresh" => {
            let id = need_id()?;
            let ticket = str_field("ticket")?;
            Ok(Request::Refresh { id, ticket })
        }
        other => Err(bad(id, format!("unknown op `{}`", other.escape_debug()))),
    })();
    result.unwrap_or_else(|r| r)
}

/// A message from the relay (text frame).
#[derive(Debug, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Reply<'a> {
    Subscribed {
        id: u32,
        stream: &'a str,
        seq: u64,
    },
    Unsubscribed {
        id: u32,
        stream: &'a str,
    },
    Skipped {
        stream: &'a str,
        from: u64,
        to: u64,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u32>,
        code: ErrorCode,
        message: &'a str,
    },
    Closing {
        reason: Reason,
    },
    /// A refresh was accepted: the connection's ticket now expires at `expiresAt`.
    Refreshed {
        id: u32,
        #[serde(rename = "expiresAt")]
        expires_at: String,
    },
    /// The connection's ticket expires soon (sent once per ticket).
    Expiring {
        #[serde(rename = "expiresAt")]
        expires_at: String,
    },
    /// A stream ended by the relay, not by the client: the refreshed ticket no longer
    /// covers it (`reason` is `forbidden`).
    #[serde(rename = "unsubscribed")]
    Ended {
        stream: &'a str,
        reason: ErrorCode,
    },
}

impl Reply<'_> {
    /// JSON text.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Meta of a `get` reply.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GetMeta<'a> {
    pub id: u32,
    pub key: &'a str,
    pub size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

/// Meta of a stream segment.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SegmentMeta<'a> {
    pub stream: &'a str,
    pub seq: u64,
    pub key: &'a str,
    pub size: usize,
    pub ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

/// Encode a meta object.
pub fn meta_json<T: Serialize>(meta: &T) -> Vec<u8> {
    serde_json::to_vec(meta).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Request {
        parse(&mut s.as_bytes().to_vec())
    }

    #[test]
    fn requests() {
        assert_eq!(
            p(r#"{"op":"get","id":7,"key":"vod/a.m4s","extra":[1]}"#),
            Request::Get {
                id: 7,
                key: "vod/a.m4s".into()
            }
        );
        assert_eq!(
            p(r#"{"op":"subscribe","id":1,"stream":"live/cam1"}"#),
            Request::Subscribe {
                id: 1,
                stream: "live/cam1".into(),
                from: From::Live
            }
        );
        assert_eq!(
            p(r#"{"op":"subscribe","id":1,"stream":"s","from":"start"}"#),
            Request::Subscribe {
                id: 1,
                stream: "s".into(),
                from: From::Start
            }
        );
        assert_eq!(
            p(r#"{"op":"subscribe","id":1,"stream":"s","from":42}"#),
            Request::Subscribe {
                id: 1,
                stream: "s".into(),
                from: From::Seq(42)
            }
        );
        assert_eq!(
            p(r#"{"op":"unsubscribe","id":4294967295,"stream":"s"}"#),
            Request::Unsubscribe {
                id: u32::MAX,
                stream: "s".into()
            }
        );
    }

    #[test]
    fn numbers_beyond_64_bits_are_json() {
        assert_eq!(
            p(r#"{"op":"get","id":3,"key":"a","n":18446744073709551616}"#),
            Request::Get {
                id: 3,
                key: "a".into()
            }
        );
        match p(r#"{"op":"fly","id":9,"n":-99999999999999999999999}"#) {
            Request::Bad { id, .. } => assert_eq!(id, Some(9)),
            other => panic!("{other:?}"),
        }
        match p(r#"{"op":"get","id":18446744073709551616,"key":"a"}"#) {
            Request::Bad { id, message } => {
                assert_eq!(id, None);
                assert!(message.contains("`id`"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_requests_keep_the_id() {
        let cases = [
            ("nope", None),
            ("[1]", None),
            (r#"{"op":"get","id":-1,"key":"a"}"#, None),
            (r#"{"op":"get","id":4294967296,"key":"a"}"#, None),
            (r#"{"op":"get","id":1.5,"key":"a"}"#, None),
            (r#"{"op":"fly","id":3}"#, Some(3)),
            (r#"{"id":3}"#, Some(3)),
            (r#"{"op":1,"id":3}"#, Some(3)),
            (r#"{"op":"get","id":3}"#, Some(3)),
            (r#"{"op":"get","id":3,"key":5}"#, Some(3)),
            (r#"{"op":"get","id":3,"key":"../x"}"#, Some(3)),
            (r#"{"op":"get","id":3,"key":"/abs"}"#, Some(3)),
            (r#"{"op":"get","id":3,"key":"a\\b"}"#, Some(3)),
            (r#"{"op":"get","id":3,"key":"a\u0001b"}"#, Some(3)),
            (r#"{"op":"get","key":"a"}"#, None),
            (
                r#"{"op":"subscribe","id":3,"stream":"s","from":"later"}"#,
                Some(3),
            ),
            (
                r#"{"op":"subscribe","id":3,"stream":"s","from":-2}"#,
                Some(3),
            ),
        ];
        for (text, id) in cases {
            match p(text) {
                Request::Bad { id: got, .. } => assert_eq!(got, id, "{text}"),
                other => panic!("{text} parsed as {other:?}"),
            }
        }
    }

    #[test]
    fn refresh_messages() {
        assert_eq!(
            p(r#"{"op":"refresh","id":8,"ticket":"abc"}"#),
            Request::Refresh {
                id: 8,
                ticket: "abc".into()
            }
        );
        match p(r#"{"op":"refresh","id":8}"#) {
            Request::Bad { id, .. } => assert_eq!(id, Some(8)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            Reply::Refreshed {
                id: 8,
                expires_at: "2030-01-01T00:00:00Z".into()
            }
            .to_json(),
            br#"{"op":"refreshed","id":8,"expiresAt":"2030-01-01T00:00:00Z"}"#
        );
        assert_eq!(
            Reply::Expiring {
                expires_at: "2030-01-01T00:00:00Z".into()
            }
            .to_json(),
            br#"{"op":"expiring","expiresAt":"2030-01-01T00:00:00Z"}"#
        );
        assert_eq!(
            Reply::Ended {
                stream: "live/a",
                reason: ErrorCode::Forbidden
            }
            .to_json(),
            br#"{"op":"unsubscribed","stream":"live/a","reason":"forbidden"}"#
        );
    }

    #[test]
    fn replies() {
        assert_eq!(
            Reply::Subscribed {
                id: 1,
                stream: "s",
                seq: 5
            }
            .to_json(),
            br#"{"op":"subscribed","id":1,"stream":"s","seq":5}"#
        );
        assert_eq!(
            Reply::Error {
                id: None,
                code: ErrorCode::BadRequest,
                message: "x"
            }
            .to_json(),
            br#"{"op":"error","code":"bad_request","message":"x"}"#
        );
        assert_eq!(
            Reply::Skipped {
                stream: "s",
                from: 1,
                to: 3
            }
            .to_json(),
            br#"{"op":"skipped","stream":"s","from":1,"to":3}"#
        );
    }
}
