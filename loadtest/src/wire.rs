//! The client side of the wire: the WebSocket upgrade, masked client frames, an
//! incremental reader of server frames that keeps only heads, texts and media meta (payload
//! bytes are counted, never stored), and the two dialects the load generator speaks:
//! mediarelay's PROTOCOL.md and, for the NestJS + socket.io peer in `bench/peers/`,
//! Engine.IO 4 over a WebSocket carrying the same requests as socket.io events. Plain
//! HTTP/1.1 `GET`s (for the nginx comparison) are in [`HttpReader`].

use std::os::fd::RawFd;

use crate::stream::{Stream, TlsClient};

/// Which dialect the server speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Proto {
    /// mediarelay's PROTOCOL.md: `GET /ws`, JSON text requests, binary media frames.
    Relay,
    /// socket.io (Engine.IO 4, WebSocket transport): the same requests as events.
    Socketio,
}

/// Where to connect and how.
#[derive(Clone)]
pub struct Target {
    pub addr: String,
    pub ticket: String,
    pub proto: Proto,
    /// TLS (`--tls`): how to open connections.
    pub tls: Option<TlsClient>,
}

impl Target {
    fn upgrade_request(&self, ticket: &str) -> Vec<u8> {
        let path = match self.proto {
            Proto::Relay => "/ws",
            Proto::Socketio => "/socket.io/?EIO=4&transport=websocket",
        };
        format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: bWVkaWFyZWxheS1sb2FkIQ==\r\nAuthorization: Bearer {ticket}\r\n\r\n",
            self.addr
        )
        .into_bytes()
    }

    /// A request as the server's dialect wants it, as one masked text frame.
    pub fn request(&self, op: &str, fields: &str) -> Vec<u8> {
        match self.proto {
            Proto::Relay => masked_text(&format!(r#"{{"op":"{op}",{fields}}}"#)),
            Proto::Socketio => masked_text(&format!(r#"42["{op}",{{{fields}}}]"#)),
        }
    }

    pub fn subscribe(&self, id: u64, stream: &str) -> Vec<u8> {
        self.request("subscribe", &format!(r#""id":{id},"stream":"{stream}""#))
    }

    pub fn get(&self, id: u64, key: &str) -> Vec<u8> {
        self.request("get", &format!(r#""id":{id},"key":"{key}""#))
    }

    /// Connect and upgrade with `ticket` (socket.io: also join the default namespace).
    pub async fn open_with(&self, ticket: &str) -> anyhow::Result<Ws> {
        let mut s = Stream::connect(self.addr.as_str(), self.tls.as_ref()).await?;
        let (r, _) = s.write_all(self.upgrade_request(ticket)).await;
        r?;
        let mut head = Vec::with_capacity(512);
        let rest = loop {
            let buf = Vec::with_capacity(512);
            let (r, buf) = s.read(buf).await;
            let n = r?;
            if n == 0 {
                anyhow::bail!("closed during handshake");
            }
            head.extend_from_slice(&buf[..n]);
            if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                if !head.starts_with(b"HTTP/1.1 101") {
                    let line = String::from_utf8_lossy(&head[..head.len().min(80)]).to_string();
                    linger_zero(s.fd());
                    anyhow::bail!("upgrade refused: {line}");
                }
                break head.split_off(p + 4);
            }
        };
        let mut ws = Ws {
            received: rest.len() as u64,
            s,
            fr: FrameReader::default(),
            pending: Vec::new(),
        };
        ws.fr.feed(&rest, &mut ws.pending);
        if self.proto == Proto::Socketio {
            // Open packet `0{...}` from the server, then `40` both ways.
            ws.wait_text(|t| t.starts_with(b"0")).await?;
            let (r, _) = ws.s.write_all(masked_text("40")).await;
            r?;
            ws.wait_text(|t| t.starts_with(b"40")).await?;
        }
        Ok(ws)
    }

    pub async fn open(&self) -> anyhow::Result<Ws> {
        self.open_with(&self.ticket).await
    }
}

/// Makes closing `s` send a reset (SO_LINGER 0) instead of a FIN, so the client's side
/// leaves no TIME_WAIT socket behind. A handshake-rate run opens tens of thousands of
/// connections from one address; with FIN closes the kernel's ephemeral-port search in
/// `connect()` walks their TIME_WAIT sockets and becomes most of the client's CPU.
fn linger_zero(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the fd is this stream's open socket for the duration of the call, and the
    // option value is a properly sized, initialised `linger`.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// An upgraded connection: the socket, its frame reader and frames parsed but not yet
/// handed out.
pub struct Ws {
    pub s: Stream,
    pub fr: FrameReader,
    pub pending: Vec<Seen>,
    /// Bytes received after the upgrade response (frames, heads included).
    pub received: u64,
}

impl Ws {
    /// Close with a reset instead of a FIN (see [`linger_zero`]).
    pub fn reset(self) {
        linger_zero(self.s.fd());
    }

    async fn wait_text(&mut self, want: impl Fn(&[u8]) -> bool) -> anyhow::Result<()> {
        let mut buf = Vec::with_capacity(4096);
        loop {
            if let Some(i) = self
                .pending
                .iter()
                .position(|e| matches!(e, Seen::Text(t) if want(t)))
            {
                self.pending.drain(..=i);
                return Ok(());
            }
            let (r, b) = self.s.read(buf).await;
            buf = b;
            let n = r?;
            if n == 0 {
                anyhow::bail!("closed during the socket.io handshake");
            }
            self.received += n as u64;
            self.fr.feed(&buf[..n], &mut self.pending);
            buf.clear();
        }
    }
}

/// A client text frame (clients mask every frame).
pub fn masked_text(text: &str) -> Vec<u8> {
    let mask = [0x5au8, 0x17, 0x33, 0x81];
    let mut f = vec![0x81];
    if text.len() < 126 {
        f.push(0x80 | text.len() as u8);
    } else {
        f.push(0x80 | 126);
        f.extend_from_slice(&(text.len() as u16).to_be_bytes());
    }
    f.extend_from_slice(&mask);
    f.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// What a text frame from the server means to a load client, in either dialect.
#[derive(Debug, PartialEq, Eq)]
pub enum Msg {
    Subscribed,
    Skipped,
    /// An `error` reply, with its code.
    Error(String),
    Closing,
    /// Engine.IO ping: answer `3`.
    Ping,
    /// Anything else (socket.io attachment placeholders, ...).
    Other,
}

pub fn classify(text: &[u8]) -> Msg {
    if text == b"2" {
        return Msg::Ping;
    }
    if text.starts_with(b"451-") {
        return Msg::Other;
    }
    let has = |needle: &[u8]| text.windows(needle.len()).any(|w| w == needle);
    if has(b"\"subscribed\"") {
        Msg::Subscribed
    } else if has(b"\"skipped\"") {
        Msg::Skipped
    } else if has(b"\"closing\"") {
        Msg::Closing
    } else if has(b"\"error\"") || has(b"\"error_reply\"") {
        // socket.io frames carry the Engine.IO/socket.io packet types ("42") before the JSON.
        let json_start = text.iter().position(|b| !b.is_ascii_digit()).unwrap_or(0);
        let code = serde_json::from_slice::<serde_json::Value>(&text[json_start..])
            .ok()
            .and_then(|v| {
                // socket.io: ["error_reply", {...}]; relay: {...}
                let obj = v.as_array().and_then(|a| a.get(1).cloned()).unwrap_or(v);
                obj.get("code")?.as_str().map(str::to_string)
            })
            .unwrap_or_else(|| "unparsed".into());
        Msg::Error(code)
    } else {
        Msg::Other
    }
}

/// A server frame, as far as a load client cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// A binary media frame; `ts` and `seq` from its meta (0 when absent).
    Media {
        ts: u64,
        seq: u64,
    },
    Text(Vec<u8>),
    Close(u16),
}

/// Incremental reader of server frames.
#[derive(Default)]
pub struct FrameReader {
    head: Vec<u8>,
    /// Payload bytes left in the current frame.
    left: u64,
    opcode: u8,
    /// Start of the current payload (texts, close payloads, media meta).
    start: Vec<u8>,
    meta_done: bool,
    in_frame: bool,
}

impl FrameReader {
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<Seen>) {
        while !data.is_empty() {
            if !self.in_frame {
                self.head.push(data[0]);
                data = &data[1..];
                if let Some(n) = self.head_len() {
                    if self.head.len() == n {
                        self.left = match self.head[1] & 0x7f {
                            126 => u16::from_be_bytes([self.head[2], self.head[3]]) as u64,
                            127 => {
                                u64::from_be_bytes(self.head[2..10].try_into().unwrap_or([0; 8]))
                            }
                            l => l as u64,
                        };
                        self.opcode = self.head[0] & 0x0f;
                        self.start.clear();
                        self.meta_done = false;
                        self.head.clear();
                        self.in_frame = true;
                        if self.left == 0 {
                            self.finish(out);
                        }
                    }
                }
                continue;
            }
            let avail = (self.left as usize).min(data.len());
            let n = if self.opcode == 2 {
                if self.meta_done {
                    avail
                } else {
                    // Keep the meta length, then the meta; count the payload only.
                    let need = if self.start.len() >= 4 {
                        4 + u32::from_be_bytes(self.start[..4].try_into().unwrap_or([0; 4]))
                            as usize
                    } else {
                        4
                    };
                    let n = need.saturating_sub(self.start.len()).min(avail);
                    self.start.extend_from_slice(&data[..n]);
                    if self.start.len() >= 4 && self.start.len() >= need {
                        let meta_len =
                            u32::from_be_bytes(self.start[..4].try_into().unwrap_or([0; 4]));
                        self.meta_done = self.start.len() > 4 || meta_len == 0;
                    }
                    n
                }
            } else {
                self.start.extend_from_slice(&data[..avail]);
                avail
            };
            self.left -= n as u64;
            data = &data[n..];
            if self.left == 0 {
                self.finish(out);
            }
        }
    }

    fn head_len(&self) -> Option<usize> {
        if self.head.len() < 2 {
            return None;
        }
        Some(match self.head[1] & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        })
    }

    fn finish(&mut self, out: &mut Vec<Seen>) {
        self.in_frame = false;
        match self.opcode {
            2 => {
                let meta = (self.start.len() > 4)
                    .then(|| serde_json::from_slice::<serde_json::Value>(&self.start[4..]).ok())
                    .flatten();
                let field = |k: &str| {
                    meta.as_ref()
                        .and_then(|m| m.get(k).and_then(|v| v.as_u64()))
                        .unwrap_or(0)
                };
                out.push(Seen::Media {
                    ts: field("ts"),
                    seq: field("seq"),
                });
            }
            1 => out.push(Seen::Text(std::mem::take(&mut self.start))),
            8 => {
                let code = if self.start.len() >= 2 {
                    u16::from_be_bytes([self.start[0], self.start[1]])
                } else {
                    1005
                };
                out.push(Seen::Close(code));
            }
            _ => {}
        }
        self.start.clear();
    }
}

/// Incremental reader of HTTP/1.1 responses on a keep-alive connection: counts responses
/// and their statuses; bodies (framed by `Content-Length`) are skipped, not stored.
#[derive(Default)]
pub struct HttpReader {
    head: Vec<u8>,
    body_left: u64,
    status: u16,
    in_body: bool,
}

impl HttpReader {
    /// Feeds bytes; pushes each complete response's status.
    pub fn feed(&mut self, mut data: &[u8], done: &mut Vec<u16>) -> anyhow::Result<()> {
        while !data.is_empty() {
            if self.in_body {
                let n = (self.body_left as usize).min(data.len());
                self.body_left -= n as u64;
                data = &data[n..];
                if self.body_left == 0 {
                    self.in_body = false;
                    done.push(self.status);
                }
                continue;
            }
            // Head: find its end (which may span reads).
            let before = self.head.len();
            self.head.extend_from_slice(data);
            let Some(end) = self.head.windows(4).position(|w| w == b"\r\n\r\n") else {
                if self.head.len() > 64 << 10 {
                    anyhow::bail!("response head over 64 KiB");
                }
                return Ok(());
            };
            let head = std::str::from_utf8(&self.head[..end])?;
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<u16>().ok())
                .ok_or_else(|| anyhow::anyhow!("bad status line"))?;
            let len = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<u64>().ok())
                .ok_or_else(|| anyhow::anyhow!("response without Content-Length"))?;
            data = &data[(end + 4 - before)..];
            self.head.clear();
            self.status = status;
            self.body_left = len;
            if len == 0 {
                done.push(status);
            } else {
                self.in_body = true;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => f.push(n as u8),
            n if n < 65536 => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    fn media(ts: u64, size: usize) -> Vec<u8> {
        let meta = format!(r#"{{"stream":"s","seq":{ts},"key":"k","size":{size},"ts":{ts}}}"#);
        let mut p = (meta.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(meta.as_bytes());
        p.resize(p.len() + size, 7);
        server_frame(2, &p)
    }

    #[test]
    fn frames_split_at_every_byte_boundary() {
        let mut wire = media(42, 70_000);
        wire.extend(server_frame(
            1,
            br#"{"op":"skipped","stream":"s","from":1,"to":2}"#,
        ));
        wire.extend(media(43, 0));
        wire.extend(server_frame(8, &4408u16.to_be_bytes()));
        let want = vec![
            Seen::Media { ts: 42, seq: 42 },
            Seen::Text(br#"{"op":"skipped","stream":"s","from":1,"to":2}"#.to_vec()),
            Seen::Media { ts: 43, seq: 43 },
            Seen::Close(4408),
        ];
        for chunk in [1, 3, 7, 4096, wire.len()] {
            let mut fr = FrameReader::default();
            let mut out = Vec::new();
            for c in wire.chunks(chunk) {
                fr.feed(c, &mut out);
            }
            assert_eq!(out, want, "chunk size {chunk}");
        }
    }

    #[test]
    fn classifies_both_dialects() {
        assert_eq!(
            classify(br#"{"op":"subscribed","id":1,"stream":"a","seq":3}"#),
            Msg::Subscribed
        );
        assert_eq!(
            classify(br#"42["subscribed",{"op":"subscribed","id":1}]"#),
            Msg::Subscribed
        );
        assert_eq!(
            classify(br#"{"op":"error","id":1,"code":"not_found","message":"x"}"#),
            Msg::Error("not_found".into())
        );
        assert_eq!(
            classify(br#"42["error_reply",{"op":"error","code":"not_found"}]"#),
            Msg::Error("not_found".into())
        );
        assert_eq!(classify(b"2"), Msg::Ping);
        assert_eq!(
            classify(br#"451-["media",{"_placeholder":true,"num":0}]"#),
            Msg::Other
        );
    }

    #[test]
    fn http_responses_across_reads() {
        let one = b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 5\r\n\r\nhello";
        let two = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        let mut wire = one.to_vec();
        wire.extend_from_slice(two);
        wire.extend_from_slice(one);
        for chunk in [1, 2, 9, wire.len()] {
            let mut r = HttpReader::default();
            let mut done = Vec::new();
            for c in wire.chunks(chunk) {
                r.feed(c, &mut done).unwrap();
            }
            assert_eq!(done, vec![200, 404, 200], "chunk size {chunk}");
        }
    }
}
