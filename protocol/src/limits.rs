//! Default limits. The relay's config starts from these and docs/protocol.md
//! quotes them; clients use them to refuse what the relay would refuse anyway.

/// Largest frame a relay reads by default (length prefix excluded).
pub const DEFAULT_MAX_FRAME: usize = 128 * 1024;
/// Largest payload of one envelope by default.
pub const DEFAULT_MAX_ENVELOPE: usize = 64 * 1024;
/// Default mailbox quota in envelopes.
pub const DEFAULT_MAILBOX_MAX_ENVELOPES: u64 = 1_000_000;
/// Default mailbox quota in payload bytes (1 GiB).
pub const DEFAULT_MAILBOX_MAX_BYTES: u64 = 1 << 30;
/// Default time an unacknowledged envelope is kept: 365 days, in seconds.
pub const DEFAULT_ENVELOPE_TTL_SECS: u64 = 365 * 24 * 60 * 60;
/// Default window of envelopes pushed to a device but not yet acked.
pub const DEFAULT_PUSH_WINDOW: u32 = 256;
/// Largest push window a relay grants, whatever the client asks.
pub const MAX_PUSH_WINDOW: u32 = 4096;
/// Largest number of sequence numbers in one Ack.
pub const MAX_ACK_SEQS: usize = 4096;
/// Default most targets in one `SendMany`.
pub const DEFAULT_MAX_RECIPIENTS_PER_SEND: usize = 1_000;
/// Most bytes one `SendMany` target takes on the wire: a 16-byte mailbox id
/// and a 32-byte token, each with a tag and a length, inside a
/// length-delimited `SendTarget` field.
pub const SEND_TARGET_WIRE_BYTES: usize = 2 + (2 + 16) + (2 + 32);
