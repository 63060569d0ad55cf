//! Fan-out: one discovery and one fetch per live segment per relay, one buffer for every
//! viewer. [`hub`] follows each stream (a poller per stream on the hub's own thread) and
//! hands each new [`stream::Seg`] to the workers that have subscribers; [`subs`] is a
//! worker's registry of subscriptions, which delivers it to each caught-up viewer;
//! [`sendq`] is a connection's bounded queue of shared buffers and the slow-consumer policy.
//!
//! Uses the origin (through its cache), the protocol's key naming and the WebSocket
//! framing; knows nothing of sockets or connections (viewers are a trait).

pub mod hub;
pub mod sendq;
pub mod stream;
pub mod subs;

pub use hub::{Hub, WorkerMsg};
pub use stream::{now_micros, Seg, Start, Stream};
pub use subs::{Sub, Subscriptions, Viewer};
