//! The wire contract of docs/protocol.md as plain data, with no I/O: the control messages
//! ([`messages`]), the `error` codes ([`errors`]), the close codes ([`close`]) and the
//! naming of storage keys ([`keys`]). Everything above depends on this module; it depends
//! on nothing in the crate.

pub mod close;
pub mod errors;
pub mod keys;
pub mod messages;

pub use close::{CloseCode, Reason};
pub use errors::{ErrorCode, Op, RequestError};
pub use messages::{meta_json, parse, From, GetMeta, Reply, Request, SegmentMeta};
