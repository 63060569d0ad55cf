//! WebSocket (RFC 6455): the opening handshake ([`handshake`]) and framing ([`frame`]).
//!
//! Incoming frames are parsed by fastwebsockets; outgoing frames are laid out by the relay
//! itself around shared payload buffers, their heads formatted by fastwebsockets.

pub mod frame;
pub mod handshake;
