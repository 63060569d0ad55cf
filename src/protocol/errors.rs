//! The `error` codes of the wire contract: one enum whose [`ErrorCode::as_str`] is both the
//! `code` of an `{"op":"error"}` reply and the `result` label of the request metrics, so
//! the two can never disagree. Also the ops a request can name, for the same labels.

/// An `error` reply's `code` (docs/protocol.md, "Errors").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The message is malformed, names an unknown op, or repeats a subscription.
    BadRequest,
    /// The ticket does not cover the key or stream.
    Forbidden,
    /// No such object.
    NotFound,
    /// The object is over the relay's size limit.
    TooLarge,
    /// Storage failed, or the relay is shutting down.
    Unavailable,
    /// The connection follows the most streams it may.
    TooManySubscriptions,
    /// Too many `get`s in flight on this connection.
    RateLimited,
    /// `refresh`: the new ticket is unknown.
    TicketInvalid,
    /// `refresh`: the new ticket has expired.
    TicketExpired,
    /// `refresh`: the new ticket was revoked.
    TicketRevoked,
    /// `refresh`: the ticket store could not be asked; retry.
    TicketsUnavailable,
}

impl ErrorCode {
    /// Every code, in the order metrics list them.
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::BadRequest,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::TooLarge,
        ErrorCode::Unavailable,
        ErrorCode::TooManySubscriptions,
        ErrorCode::RateLimited,
        ErrorCode::TicketInvalid,
        ErrorCode::TicketExpired,
        ErrorCode::TicketRevoked,
        ErrorCode::TicketsUnavailable,
    ];

    /// The code on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TicketInvalid => "ticket_invalid",
            ErrorCode::TicketExpired => "ticket_expired",
            ErrorCode::TicketRevoked => "ticket_revoked",
            ErrorCode::TicketsUnavailable => "tickets_unavailable",
        }
    }

    /// Position in [`ErrorCode::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// A request that failed: the code and the human-readable `message` of the reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct RequestError {
    /// The wire code.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
}

impl RequestError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RequestError {
        RequestError {
            code,
            message: message.into(),
        }
    }
}

/// The ops a client can send, as counted by the request metrics (`bad`: a message that
/// named none of them or could not be read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `get`
    Get,
    /// `subscribe`
    Subscribe,
    /// `unsubscribe`
    Unsubscribe,
    /// `refresh`
    Refresh,
    /// A malformed message.
    Bad,
}

impl Op {
    /// Every op, in the order metrics list them.
    pub const ALL: [Op; 5] = [
        Op::Get,
        Op::Subscribe,
        Op::Unsubscribe,
        Op::Refresh,
        Op::Bad,
    ];

    /// The metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Subscribe => "subscribe",
            Op::Unsubscribe => "unsubscribe",
            Op::Refresh => "refresh",
            Op::Bad => "bad",
        }
    }

    /// Position in [`Op::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_follow_all() {
        for (i, c) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
        }
        for (i, o) in Op::ALL.iter().enumerate() {
            assert_eq!(o.index(), i);
        }
        assert_eq!(
            ErrorCode::TooManySubscriptions.as_str(),
            "too_many_subscriptions"
        );
    }
}
