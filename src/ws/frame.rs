//! WebSocket framing.
//!
//! **Outgoing** (hot path, no payload copy): a media frame is two parts, a small prefix
//! (frame head + u32 meta length + meta JSON) and the payload [`Bytes`] shared with every
//! other viewer. For a live segment the prefix is built once per segment and shared too,
//! so a subscriber's send allocates nothing. Heads are formatted by fastwebsockets'
//! `Frame::fmt_head`, which reads only the payload *length* of the frame it is given: we
//! give it a borrowed view of the right length over the object's own buffer (headroom +
//! payload), so no frame-sized buffer is ever built.
//!
//! **Incoming**: [`frame_len`] finds frame boundaries in the connection's input (and
//! refuses oversized or unmasked frames before buffering them); each complete frame is then
//! parsed, unmasked and checked by fastwebsockets ([`Parser`]).

use std::cell::RefCell;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocketError, WebSocketRead};

use crate::protocol::CloseCode;

/// Longest frame head (2 + 8 bytes of length; server frames are unmasked).
pub const MAX_HEAD: usize = 10;

/// Format a frame head for a frame whose payload is `payload_view` (only its length is
/// read). Returns the head bytes.
fn head_for(opcode: OpCode, payload_view: &[u8]) -> ([u8; MAX_HEAD], usize) {
    let mut head = [0u8; MAX_HEAD];
    let mut frame = Frame::new(true, opcode, None, Payload::Borrowed(payload_view));
    let n = frame.fmt_head(&mut head);
    (head, n)
}

/// Prefix of a binary media frame carrying a payload of `payload_len` bytes with `meta`:
/// head, meta length, meta. The frame's remaining bytes are the payload, sent as the
/// second part. `view`, when given, is any borrowed slice of exactly the frame's length
/// (the object's headroom followed by its payload), so the head is formatted without
/// building a frame-sized buffer.
pub fn media_prefix(meta: &[u8], payload_len: usize, view: Option<&[u8]>) -> Bytes {
    let frame_len = 4 + meta.len() + payload_len;
    let (head, n) = match view {
        Some(view) if view.len() == frame_len => head_for(OpCode::Binary, view),
        // Metas never outgrow the headroom reserved for their key; if one did, pay for a
        // zeroed view rather than send a wrong head.
        _ => head_for(OpCode::Binary, &vec![0u8; frame_len]),
    };
    let mut out = Vec::with_capacity(n + 4 + meta.len());
    out.extend_from_slice(&head[..n]);
    out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    out.extend_from_slice(meta);
    Bytes::from(out)
}

/// Serialize a whole (small) frame.
fn whole(mut frame: Frame<'_>, payload_len: usize) -> Bytes {
    let mut out = Vec::with_capacity(MAX_HEAD + payload_len);
    let n = frame.write(&mut out).len();
    out.truncate(n);
    Bytes::from(out)
}

/// A complete text frame.
pub fn text(payload: &[u8]) -> Bytes {
    whole(Frame::text(Payload::Borrowed(payload)), payload.len())
}

/// A complete close frame.
pub fn close_frame(code: CloseCode, reason: &str) -> Bytes {
    whole(
        Frame::close(code.code(), reason.as_bytes()),
        2 + reason.len(),
    )
}

/// A complete ping frame.
pub fn ping(payload: &[u8]) -> Bytes {
    whole(
        Frame::new(true, OpCode::Ping, None, Payload::Borrowed(payload)),
        payload.len(),
    )
}

/// A complete binary frame (echo mode; media frames are laid out by [`media_prefix`]).
pub fn binary(payload: &[u8]) -> Bytes {
    whole(Frame::binary(Payload::Borrowed(payload)), payload.len())
}

/// A complete pong frame.
pub fn pong(payload: &[u8]) -> Bytes {
    whole(Frame::pong(Payload::Borrowed(payload)), payload.len())
}

/// Length of the first frame in `buf` if it is complete, `Ok(None)` if more bytes are
/// needed, or the close code to fail the connection with.
pub fn frame_len(buf: &[u8], max_payload: usize) -> Result<Option<usize>, CloseCode> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[1] & 0x80 == 0 {
        // RFC 6455 5.1: a server must close on an unmasked client frame.
        return Err(CloseCode::ProtocolError);
    }
    let (extra, len) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (2, u16::from_be_bytes([buf[2], buf[3]]) as u64)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (8, u64::from_be_bytes(b))
        }
        n => (0, n as u64),
    };
    let opcode = buf[0] & 0x0f;
    if opcode >= 8 && len > 125 {
        return Err(CloseCode::ProtocolError);
    }
    if len > max_payload as u64 {
        return Err(CloseCode::TooBig);
    }
    let total = 2 + extra + 4 + len as usize;
    Ok((buf.len() >= total).then_some(total))
}

/// In-memory reader over one complete frame, so fastwebsockets never waits on a socket.
struct Feed(Rc<RefCell<BytesMut>>);

impl tokio::io::AsyncRead for Feed {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let mut data = self.0.borrow_mut();
        let n = data.len().min(buf.remaining());
        buf.put_slice(&data[..n]);
        bytes::Buf::advance(&mut *data, n);
        Poll::Ready(Ok(()))
    }
}

/// A parsed client frame.
pub struct Incoming {
    pub fin: bool,
    pub opcode: OpCode,
    pub payload: BytesMut,
}

/// fastwebsockets' frame reader, one per worker, fed one complete frame at a time.
pub struct Parser {
    reader: WebSocketRead<Feed>,
    input: Rc<RefCell<BytesMut>>,
}

impl Default for Parser {
    fn default() -> Self {
        let input = Rc::new(RefCell::new(BytesMut::new()));
        let (mut reader, _) = fastwebsockets::after_handshake_split(
            Feed(input.clone()),
            tokio::io::empty(),
            Role::Server,
        );
        // Control frames are answered by the connection itself, through its send queue.
        reader.set_auto_close(false);
        reader.set_auto_pong(false);
        Parser { reader, input }
    }
}

impl Parser {
    /// Parse one complete frame (as delimited by [`frame_len`]); the error is the close
    /// code the connection must fail with.
    pub fn parse(&mut self, frame: &[u8]) -> Result<Incoming, CloseCode> {
        // The frame is complete, so the reader finishes in one poll without waiting.
        self.input.borrow_mut().extend_from_slice(frame);
        let mut send = |_: Frame<'_>| async { Ok::<(), std::convert::Infallible>(()) };
        let outcome = {
            let fut = pin!(self.reader.read_frame(&mut send));
            let mut cx = Context::from_waker(Waker::noop());
            match fut.poll(&mut cx) {
                Poll::Ready(Ok(f)) => Ok(Incoming {
                    fin: f.fin,
                    opcode: f.opcode,
                    payload: match f.payload {
                        Payload::Bytes(b) => b,
                        other => BytesMut::from(&other[..]),
                    },
                }),
                Poll::Ready(Err(WebSocketError::InvalidUTF8)) => Err(CloseCode::InvalidUtf8),
                Poll::Ready(Err(WebSocketError::FrameTooLarge)) => Err(CloseCode::TooBig),
                Poll::Ready(Err(_)) | Poll::Pending => Err(CloseCode::ProtocolError),
            }
        };
        if outcome.is_err() || !self.input.borrow().is_empty() {
            // A frame rejected half way may leave bytes inside the reader: start afresh so
            // the next connection on this worker is not affected.
            *self = Parser::default();
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut v = vec![(fin as u8) << 7 | opcode];
        match payload.len() {
            n if n < 126 => v.push(0x80 | n as u8),
            n if n < 65536 => {
                v.push(0x80 | 126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(0x80 | 127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        v
    }

    #[test]
    fn heads_match_lengths() {
        for size in [0usize, 1, 100, 125, 126, 65_535, 65_536, 1 << 20] {
            let mut buf = vec![0u8; 300 + size];
            buf[300..].fill(7);
            let meta = br#"{"id":1}"#;
            let total = 4 + meta.len() + size;
            let prefix = media_prefix(meta, size, Some(&buf[buf.len() - total..]));
            assert_eq!(prefix, media_prefix(meta, size, None));
            let (head_len, len) = match prefix[1] {
                126 => (4, u16::from_be_bytes([prefix[2], prefix[3]]) as usize),
                127 => (
                    10,
                    u64::from_be_bytes(prefix[2..10].try_into().unwrap()) as usize,
                ),
                n => (2, n as usize),
            };
            assert_eq!(prefix[0], 0x82);
            assert_eq!(len, total, "size {size}");
            assert_eq!(prefix.len(), head_len + 4 + meta.len());
            assert_eq!(
                &prefix[head_len..head_len + 4],
                &(meta.len() as u32).to_be_bytes()
            );
        }
    }

    #[test]
    fn boundaries() {
        let f = masked(true, 1, b"hello");
        assert_eq!(frame_len(&f[..3], 4096), Ok(None));
        assert_eq!(frame_len(&f, 4096), Ok(Some(f.len())));
        let big = masked(true, 1, &vec![b'a'; 5000]);
        assert_eq!(frame_len(&big, 4096), Err(CloseCode::TooBig));
        let mut unmasked = f.clone();
        unmasked[1] &= 0x7f;
        assert_eq!(frame_len(&unmasked, 4096), Err(CloseCode::ProtocolError));
        let ping = masked(true, 9, &[0u8; 126]);
        assert_eq!(frame_len(&ping, 4096), Err(CloseCode::ProtocolError));
    }

    #[test]
    fn parsing() {
        let mut p = Parser::default();
        let f = p.parse(&masked(true, 1, b"{\"op\":1}")).unwrap();
        assert!(f.fin);
        assert_eq!(f.opcode, OpCode::Text);
        assert_eq!(&f.payload[..], b"{\"op\":1}");
        assert_eq!(
            p.parse(&masked(true, 1, &[0xff, 0xfe])).err(),
            Some(CloseCode::InvalidUtf8)
        );
        // Reserved bits set.
        let mut rsv = masked(true, 1, b"x");
        rsv[0] |= 0x40;
        assert_eq!(p.parse(&rsv).err(), Some(CloseCode::ProtocolError));
        // Unknown opcode.
        assert_eq!(
            p.parse(&masked(true, 3, b"x")).err(),
            Some(CloseCode::ProtocolError)
        );
        // Fragmented control frame.
        assert_eq!(
            p.parse(&masked(false, 9, b"x")).err(),
            Some(CloseCode::ProtocolError)
        );
        // The parser is reusable after errors.
        let f = p.parse(&masked(false, 1, b"ab")).unwrap();
        assert!(!f.fin);
        let f = p.parse(&masked(true, 0, b"cd")).unwrap();
        assert_eq!(f.opcode, OpCode::Continuation);
        assert_eq!(&f.payload[..], b"cd");
    }

    #[test]
    fn small_frames() {
        assert_eq!(&text(b"hi")[..], &[0x81, 2, b'h', b'i']);
        assert_eq!(
            &close_frame(CloseCode::Ticket, "")[..],
            &[0x88, 2, 0x11, 0x31]
        );
        assert_eq!(&pong(b"p")[..], &[0x8a, 1, b'p']);
    }
}
