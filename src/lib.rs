//! # mediarelay
//!
//! A thread-per-core WebSocket relay that pushes media segments from object storage to many
//! viewers. ARCHITECTURE.md has the map; in short, from the top down (each module uses only
//! the ones below it):
//!
//! ```text
//!  cli ─► control ─► dataplane ─► fanout ─► origin ─► protocol
//!         (process,   (per-core     (hub,      (fs, gcs,   (messages, error and
//!          signals,    workers,      streams,   cache,      close codes, keys)
//!          reload,     http front,   subs,      pool)
//!          tickets     sessions)     sendq)
//!          sync)          │                       ws (handshake, framing)
//!                         └─► tickets (snapshot, admission, stores) ─► gcp
//!                         └─► metrics
//! ```
//!
//! - [`dataplane`]: the per-core data plane (io_uring or epoll), the HTTP front end and
//!   one connection's session.
//! - [`fanout`]: live streams, one fetch per segment, delivery to every subscriber.
//! - [`origin`]: where objects come from, their cache and buffers.
//! - [`tickets`]: the credentials, their snapshot and the upgrade rule.
//! - [`protocol`], [`ws`]: the wire contract (pure) and WebSocket framing.
//! - [`control`]: the process around the data plane: signals, reload, ticket sync.
//! - [`metrics`], [`config`], [`cli`], [`gcp`] (Google API plumbing).
//!
//! The one module with `unsafe` is [`sys`]; the crate denies it everywhere else.

#![deny(unsafe_code)]

pub mod cli;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod fanout;
pub mod gcp;
pub mod metrics;
pub mod origin;
pub mod protocol;
#[allow(unsafe_code)]
pub mod sys;
pub mod tickets;
pub mod ws;
