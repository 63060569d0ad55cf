//! A connection's incoming bytes: frame boundaries, control frames, and the reassembly of
//! fragmented text messages, each complete message handed to [`super::ops`]. Bytes are
//! read into the worker's scratch buffer; only an incomplete frame is kept per connection.

use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use fastwebsockets::OpCode;

use super::{ops, CloseReq, Conn, Context};
use crate::dataplane::socket::Socket;
use crate::protocol::CloseCode;
use crate::sys::Io;
use crate::ws::frame;

/// Incoming bytes of one connection: an incomplete frame, and a fragmented message being
/// reassembled.
#[derive(Default)]
pub(super) struct Reader {
    inbuf: Vec<u8>,
    /// A fragmented message being reassembled: its opcode and the bytes so far.
    fragments: Option<(OpCode, Vec<u8>)>,
}

impl Reader {
    /// Whether no partial frame or message is held.
    pub(super) fn is_empty(&self) -> bool {
        self.inbuf.is_empty() && self.fragments.is_none()
    }

    /// The socket is readable: read everything there is. Returns true at EOF or error.
    pub(super) fn read_ready<C: Context>(
        &mut self,
        sock: &Socket,
        ctx: &C,
        conn: &Rc<Conn>,
        discard: bool,
    ) -> bool {
        loop {
            let mut scratch = ctx.scratch();
            let n = match sock.recv(&mut scratch) {
                Ok(Io::Done(0)) | Err(_) => return true,
                Ok(Io::Done(n)) => n,
                Ok(Io::WouldBlock) => return false,
            };
            conn.last_rx.set(std::time::Instant::now());
            conn.pings.set(0);
            conn.park_asked.set(false);
            if discard {
                // We sent our close frame: the client's close frame ends the connection.
                if self.close_answered(&scratch[..n]) {
                    return true;
                }
            } else if conn.close_req.get().is_none() {
                self.process(ctx, conn, &scratch[..n]);
            }
            if n < scratch.len() && sock.short_read_drains() {
                return false;
            }
        }
    }

    /// After our close frame: whether `inbuf ++ data` holds the client's close frame (or
    /// anything unparseable, which ends the connection as well). Other frames are dropped.
    fn close_answered(&mut self, data: &[u8]) -> bool {
        self.inbuf.extend_from_slice(data);
        let mut at = 0;
        loop {
            match frame::frame_len(&self.inbuf[at..], usize::MAX) {
                Ok(Some(len)) => {
                    if self.inbuf[at] & 0x0f == 0x8 {
                        return true;
                    }
                    at += len;
                }
                Ok(None) => {
                    self.inbuf.drain(..at);
                    return false;
                }
                Err(_) => return true,
            }
        }
    }

    /// Parse and act on every complete frame in `inbuf ++ data`.
    pub(super) fn process<C: Context>(&mut self, ctx: &C, conn: &Rc<Conn>, data: &[u8]) {
        let max = ctx.config().connection.max_message as usize;
        if self.inbuf.is_empty() {
            let used = self.frames(ctx, conn, data, max);
            if used < data.len() && conn.close_req.get().is_none() {
                self.inbuf.extend_from_slice(&data[used..]);
            }
        } else {
            let mut buf = std::mem::take(&mut self.inbuf);
            buf.extend_from_slice(data);
            let used = self.frames(ctx, conn, &buf, max);
            if conn.close_req.get().is_none() {
                buf.drain(..used);
                if !buf.is_empty() {
                    self.inbuf = buf;
                }
            }
        }
    }

    /// Handle complete frames at the start of `buf`; returns the bytes consumed.
    fn frames<C: Context>(&mut self, ctx: &C, conn: &Rc<Conn>, buf: &[u8], max: usize) -> usize {
        let mut at = 0;
        while conn.close_req.get().is_none() {
            let len = match frame::frame_len(&buf[at..], max) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                // A binary frame is refused for what it is (1003), whatever its size.
                Err(CloseCode::TooBig) if buf[at] & 0x0f == 0x2 && !ctx.echo() => {
                    conn.request_close(CloseReq::code(CloseCode::UnsupportedData));
                    break;
                }
                Err(code) => {
                    conn.request_close(CloseReq::code(code));
                    break;
                }
            };
            let parsed = ctx.parser().parse(&buf[at..at + len]);
            at += len;
            match parsed {
                Ok(f) => self.frame(ctx, conn, f, max),
                Err(code) => conn.request_close(CloseReq::code(code)),
            }
        }
        at
    }

    fn frame<C: Context>(&mut self, ctx: &C, conn: &Rc<Conn>, f: frame::Incoming, max: usize) {
        let fail = |code| conn.request_close(CloseReq::code(code));
        match f.opcode {
            OpCode::Text | OpCode::Binary if self.fragments.is_some() => {
                fail(CloseCode::ProtocolError);
            }
            OpCode::Binary if !ctx.echo() => fail(CloseCode::UnsupportedData),
            OpCode::Text | OpCode::Binary if f.fin => complete(ctx, conn, f.opcode, f.payload),
            OpCode::Text | OpCode::Binary => {
                self.fragments = Some((f.opcode, f.payload.to_vec()));
            }
            OpCode::Continuation => {
                let Some((opcode, mut buf)) = self.fragments.take() else {
                    return fail(CloseCode::ProtocolError);
                };
                if buf.len() + f.payload.len() > max {
                    return fail(CloseCode::TooBig);
                }
                buf.extend_from_slice(&f.payload);
                if !f.fin {
                    self.fragments = Some((opcode, buf));
                } else if opcode == OpCode::Text && std::str::from_utf8(&buf).is_err() {
                    fail(CloseCode::InvalidUtf8);
                } else {
                    complete(ctx, conn, opcode, BytesMut::from(&buf[..]));
                }
            }
            OpCode::Close => {
                let code = match f.payload.len() {
                    0 => CloseCode::Normal,
                    1 => CloseCode::ProtocolError,
                    _ => {
                        let code = u16::from_be_bytes([f.payload[0], f.payload[1]]);
                        if std::str::from_utf8(&f.payload[2..]).is_ok() {
                            CloseCode::answer(code)
                        } else {
                            CloseCode::ProtocolError
                        }
                    }
                };
                fail(code);
            }
            OpCode::Ping => {
                conn.queue
                    .borrow_mut()
                    .push_keep(frame::pong(&f.payload), Bytes::new());
                conn.wake.notify();
            }
            OpCode::Pong => {}
        }
    }
}

/// A complete message: a request (text), or, in echo mode, sent back as it came.
fn complete<C: Context>(ctx: &C, conn: &Rc<Conn>, opcode: OpCode, payload: BytesMut) {
    if ctx.echo() {
        let out = if opcode == OpCode::Text {
            frame::text(&payload)
        } else {
            frame::binary(&payload)
        };
        conn.queue.borrow_mut().push_keep(out, Bytes::new());
        conn.wake.notify();
    } else {
        ops::message(ctx, conn, payload);
    }
}
