//! Tern's wire protocol: the protobuf messages of `proto/tern.proto`, the
//! length-delimited framing that carries them on QUIC streams, the stable
//! error codes, the default limits, relay URLs and invite codes.
//!
//! This crate does no I/O of its own (the optional `tokio` feature adds frame
//! reading and writing over any `AsyncRead`/`AsyncWrite`), so the relay, the
//! client library and the fuzz targets all share one decoder.
#![warn(missing_docs)]

pub mod error;
pub mod frame;
pub mod frames;
pub mod history;
pub mod invite;
pub mod limits;
pub mod link;
pub mod padding;
pub mod url;

#[cfg(feature = "tokio")]
pub mod io;
#[cfg(feature = "logging")]
pub mod logging;

/// Generated protobuf types (package `tern.v1`).
#[allow(missing_docs, clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/tern.v1.rs"));
}

/// The ALPN protocol id every Tern QUIC connection negotiates.
pub const ALPN: &[u8] = b"tern/1";

/// TLS exporter label for binding authentication to the TLS session.
pub const AUTH_EXPORTER_LABEL: &[u8] = b"EXPORTER-tern/1 auth";

/// Domain separation prefix of the bytes a device signs to authenticate.
pub const AUTH_SIGNATURE_CONTEXT: &[u8] = b"tern/1 auth";

/// First byte of a control stream: one request frame, one response frame.
pub const STREAM_CONTROL: u8 = 1;
/// First byte of the message stream: sends, pushes and acks as frames.
pub const STREAM_MESSAGES: u8 = 2;
/// First byte of a presence stream: one `PresenceSubscribe`, then
/// `PresenceUpdate`s (docs/protocol.md §17). Never on an authenticated
/// connection.
pub const STREAM_PRESENCE: u8 = 3;
/// Length of a presence capability in bytes.
pub const PRESENCE_CAPABILITY_LEN: usize = 32;
/// A QUIC DATAGRAM frame holding exactly this one byte, on an
/// authenticated connection, is a presence heartbeat (docs/protocol.md
/// §17): unanswered and never retransmitted, sent in place of the
/// connection's keep-alive. Any other datagram is dropped unread.
pub const DATAGRAM_HEARTBEAT: u8 = 1;
/// Bytes of datagrams a relay buffers per connection, and so the largest
/// datagram it takes (QUIC's `max_datagram_frame_size`).
pub const MAX_DATAGRAM_BUFFER: usize = 64;

/// Length of a mailbox id in bytes.
pub const MAILBOX_ID_LEN: usize = 16;
/// Length of a client message id in bytes.
pub const MESSAGE_ID_LEN: usize = 16;
/// Length of a send token in bytes.
pub const TOKEN_LEN: usize = 32;
/// Length of an authentication challenge nonce in bytes.
pub const NONCE_LEN: usize = 32;

/// The bytes a device signs to authenticate to its relay, binding the
/// signature to this TLS session (`exporter`), this challenge and this mailbox.
pub fn auth_signed_bytes(exporter: &[u8], nonce: &[u8], mailbox_id: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        AUTH_SIGNATURE_CONTEXT.len() + exporter.len() + nonce.len() + mailbox_id.len(),
    );
    out.extend_from_slice(AUTH_SIGNATURE_CONTEXT);
    out.extend_from_slice(exporter);
    out.extend_from_slice(nonce);
    out.extend_from_slice(mailbox_id);
    out
}

pub use error::{ErrorCode, WireError};
pub use frame::{decode_frame, encode_frame, FrameError};
