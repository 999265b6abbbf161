//! The envelope log's record format. A segment file is a magic header
//! followed by records; each record is
//!
//! ```text
//! body length (4, BE) ‖ CRC-32 of body (4, BE) ‖ body
//! body = kind (1) ‖ mailbox id (16) ‖ ...
//!   ENVELOPE: seq (8) ‖ received ms (8) ‖ expires ms (8) ‖ message id (16) ‖ payload
//!   REMOVE:   seq (8) × n          (acknowledged or expired envelopes)
//! ```
//!
//! All integers are big-endian. The CRC lets recovery tell a record torn by
//! a crash (or damaged on disk) from a whole one.

use super::{MailboxId, MessageId};

/// First bytes of every segment file; the version is in the last byte.
pub const MAGIC: &[u8; 8] = b"TERNLOG1";
/// Bytes before a record's body.
pub const HEADER: usize = 8;
const KIND_ENVELOPE: u8 = 1;
const KIND_REMOVE: u8 = 2;
/// Envelope body bytes before the payload.
pub const ENVELOPE_FIXED: usize = 1 + 16 + 8 + 8 + 8 + 16;
/// Largest body recovery accepts; anything longer is damage, not a record.
pub const MAX_BODY: usize = 64 << 20;

/// One envelope as logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeRecord<'a> {
    /// Its mailbox.
    pub mailbox: MailboxId,
    /// Its sequence number in the mailbox.
    pub seq: u64,
    /// When the relay accepted it.
    pub received_ms: u64,
    /// When it expires unless acked.
    pub expires_ms: u64,
    /// The sender's message id.
    pub message_id: MessageId,
    /// Opaque sealed bytes.
    pub payload: &'a [u8],
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    /// An envelope was stored.
    Envelope(EnvelopeRecord<'a>),
    /// Envelopes of a mailbox were removed (acked or expired).
    Remove {
        /// The mailbox.
        mailbox: MailboxId,
        /// Their sequence numbers.
        seqs: Vec<u64>,
    },
}

/// What is wrong with bytes that should hold a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// The bytes end inside the record: a write cut short.
    Truncated,
    /// The length, checksum or layout is wrong.
    Corrupt(&'static str),
}

/// Length of an envelope record with a payload of `payload_len` bytes.
pub fn envelope_len(payload_len: usize) -> usize {
    HEADER + ENVELOPE_FIXED + payload_len
}

fn finish(out: &mut [u8], start: usize) {
    let body = &out[start + HEADER..];
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(body);
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
}

/// Append an envelope record to `out`.
pub fn put_envelope(out: &mut Vec<u8>, e: &EnvelopeRecord<'_>) {
    let start = out.len();
    out.reserve(envelope_len(e.payload.len()));
    out.extend_from_slice(&[0; HEADER]);
    out.push(KIND_ENVELOPE);
    out.extend_from_slice(&e.mailbox);
    out.extend_from_slice(&e.seq.to_be_bytes());
    out.extend_from_slice(&e.received_ms.to_be_bytes());
    out.extend_from_slice(&e.expires_ms.to_be_bytes());
    out.extend_from_slice(&e.message_id);
    out.extend_from_slice(e.payload);
    finish(out, start);
}

/// Append a removal record to `out`.
pub fn put_remove(out: &mut Vec<u8>, mailbox: &MailboxId, seqs: &[u64]) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    out.push(KIND_REMOVE);
    out.extend_from_slice(mailbox);
    for s in seqs {
        out.extend_from_slice(&s.to_be_bytes());
    }
    finish(out, start);
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Decode the record at the start of `bytes`; returns it and its length.
pub fn decode(bytes: &[u8]) -> Result<(Record<'_>, usize), Damage> {
    let Some(header) = bytes.get(..HEADER) else {
        return Err(Damage::Truncated);
    };
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 || len > MAX_BODY {
        return Err(Damage::Corrupt("record length"));
    }
    let Some(body) = bytes.get(HEADER..HEADER + len) else {
        return Err(Damage::Truncated);
    };
    if crc32fast::hash(body) != crc {
        return Err(Damage::Corrupt("record checksum"));
    }
    let mut mailbox = [0u8; 16];
    let record = match body[0] {
        KIND_ENVELOPE if body.len() >= ENVELOPE_FIXED => {
            mailbox.copy_from_slice(&body[1..17]);
            let mut message_id = [0u8; 16];
            message_id.copy_from_slice(&body[41..57]);
            Record::Envelope(EnvelopeRecord {
                mailbox,
                seq: u64_at(body, 17),
                received_ms: u64_at(body, 25),
                expires_ms: u64_at(body, 33),
                message_id,
                payload: &body[ENVELOPE_FIXED..],
            })
        }
        KIND_REMOVE if body.len() >= 17 && (body.len() - 17) % 8 == 0 => {
            mailbox.copy_from_slice(&body[1..17]);
            let seqs = body[17..].chunks_exact(8).map(|c| u64_at(c, 0)).collect();
            Record::Remove { mailbox, seqs }
        }
        _ => return Err(Damage::Corrupt("record kind or layout")),
    };
    Ok((record, HEADER + len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(payload: &[u8]) -> EnvelopeRecord<'_> {
        EnvelopeRecord {
            mailbox: [7; 16],
            seq: 42,
            received_ms: 1_000,
            expires_ms: 2_000,
            message_id: [9; 16],
            payload,
        }
    }

    #[test]
    fn records_round_trip_back_to_back() {
        let mut out = Vec::new();
        let env = sample(b"sealed bytes");
        put_envelope(&mut out, &env);
        assert_eq!(out.len(), envelope_len(env.payload.len()));
        put_remove(&mut out, &[7; 16], &[1, 5, 42]);
        let (first, n) = decode(&out).unwrap();
        assert_eq!(first, Record::Envelope(env));
        let (second, m) = decode(&out[n..]).unwrap();
        assert_eq!(
            second,
            Record::Remove {
                mailbox: [7; 16],
                seqs: vec![1, 5, 42]
            }
        );
        assert_eq!(n + m, out.len());
    }

    #[test]
    fn a_cut_record_is_truncated_and_a_flipped_bit_is_corrupt() {
        let mut out = Vec::new();
        put_envelope(&mut out, &sample(b"payload"));
        for cut in 0..out.len() {
            assert_eq!(decode(&out[..cut]), Err(Damage::Truncated), "cut at {cut}");
        }
        for i in HEADER..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x10;
            assert!(
                matches!(decode(&bad), Err(Damage::Corrupt(_))),
                "flip at {i}"
            );
        }
        assert!(matches!(decode(&[0; 16]), Err(Damage::Corrupt(_))));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn any_envelope_round_trips(payload in proptest::collection::vec(any::<u8>(), 0..512), seq: u64) {
            let mut out = Vec::new();
            let env = EnvelopeRecord { seq, ..sample(&payload) };
            put_envelope(&mut out, &env);
            prop_assert_eq!(decode(&out).unwrap(), (Record::Envelope(env), out.len()));
        }
    }
}
