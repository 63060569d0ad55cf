//! The close codes the relay sends (docs/protocol.md, "Close codes"), and the rule for a
//! code a client sends in its own close frame.

/// A WebSocket close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: normal closure (the answer to a client's plain close).
    Normal,
    /// 1001: the relay is shutting down (drain).
    GoingAway,
    /// 1002: the client broke RFC 6455 framing.
    ProtocolError,
    /// 1003: a binary message from the client.
    UnsupportedData,
    /// 1007: a text message that is not UTF-8.
    InvalidUtf8,
    /// 1008: policy violation.
    Policy,
    /// 1009: a message over the size limit.
    TooBig,
    /// 4401: the ticket was revoked, deleted or expired.
    Ticket,
    /// 4402: nothing received for `idle_timeout` (keepalive).
    Idle,
    /// 4408: the client did not read fast enough (slow consumer).
    SlowConsumer,
    /// A valid code the client sent, echoed back (1000–1003, 1007–1011, 3000–4999).
    Echo(u16),
}

impl CloseCode {
    /// The codes the relay itself sends, in the order metrics list them.
    pub const SENT: [CloseCode; 10] = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::ProtocolError,
        CloseCode::UnsupportedData,
        CloseCode::InvalidUtf8,
        CloseCode::Policy,
        CloseCode::TooBig,
        CloseCode::Ticket,
        CloseCode::Idle,
        CloseCode::SlowConsumer,
    ];

    /// The number on the wire.
    pub const fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError => 1002,
            CloseCode::UnsupportedData => 1003,
            CloseCode::InvalidUtf8 => 1007,
            CloseCode::Policy => 1008,
            CloseCode::TooBig => 1009,
            CloseCode::Ticket => 4401,
            CloseCode::Idle => 4402,
            CloseCode::SlowConsumer => 4408,
            CloseCode::Echo(c) => c,
        }
    }

    /// The code to answer a client's close frame with: its own code when that is one a peer
    /// may send (RFC 6455 §7.4), or 1002.
    pub fn answer(code: u16) -> CloseCode {
        match code {
            1000..=1003 | 1007..=1011 | 3000..=4999 => CloseCode::SENT
                .into_iter()
                .find(|c| c.code() == code)
                .unwrap_or(CloseCode::Echo(code)),
            _ => CloseCode::ProtocolError,
        }
    }
}

/// Why the relay closes a connection, sent as `{"op":"closing","reason":...}` before the
/// close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The ticket reached its expiry (4401).
    TicketExpired,
    /// The ticket was revoked or deleted (4401).
    TicketRevoked,
    /// The client fell too far behind (4408).
    SlowConsumer,
    /// The relay is draining (1001).
    ShuttingDown,
    /// Nothing received for `idle_timeout` (4402).
    IdleTimeout,
}

impl Reason {
    /// The reason on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::TicketExpired => "ticket_expired",
            Reason::TicketRevoked => "ticket_revoked",
            Reason::SlowConsumer => "slow_consumer",
            Reason::ShuttingDown => "shutting_down",
            Reason::IdleTimeout => "idle_timeout",
        }
    }

    /// The close code that follows the message.
    pub const fn close_code(self) -> CloseCode {
        match self {
            Reason::TicketExpired | Reason::TicketRevoked => CloseCode::Ticket,
            Reason::SlowConsumer => CloseCode::SlowConsumer,
            Reason::ShuttingDown => CloseCode::GoingAway,
            Reason::IdleTimeout => CloseCode::Idle,
        }
    }
}

impl serde::Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        assert_eq!(CloseCode::answer(1000), CloseCode::Normal);
        assert_eq!(CloseCode::answer(4401), CloseCode::Ticket);
        assert_eq!(CloseCode::answer(3001).code(), 3001);
        assert_eq!(CloseCode::answer(1005), CloseCode::ProtocolError);
        assert_eq!(CloseCode::answer(999), CloseCode::ProtocolError);
        assert_eq!(CloseCode::answer(5000), CloseCode::ProtocolError);
    }
}
