//! The envelope log's record format. A segment file is a magic header
//! followed by records; each record is
//!
//! ```text
//! body length (4, BE) ‖ CRC-32 of body (4, BE) ‖ body
//! body = kind (1) ‖ mailbox id (16) ‖ ...
//!   ENVELOPE: seq (8) ‖ received ms (8) ‖ expires ms (8) ‖ message id (16) ‖ payload
//!   REMOVE:   seq (8) × n          (acknowledged or expired envelopes)
//! body = kind (1) ‖ ...            (kinds 3 and 4 carry no mailbox id)
//!   PAYLOAD:  received ms (8) ‖ expires ms (8) ‖ message id (16) ‖ payload
//!   REFS:     payload offset (8) ‖ (mailbox id (16) ‖ seq (8)) × n
//! ```
//!
//! PAYLOAD and REFS (added with multi-recipient sends) store one envelope
//! once for many mailboxes: a PAYLOAD record immediately followed, in the
//! same segment, by a REFS record naming it by offset and listing which
//! mailbox holds it under which sequence number (24 bytes a mailbox).
//! Segments written before them hold only kinds 1 and 2 and read the same.
//!
//! All integers are big-endian. The CRC lets recovery tell a record torn by
//! a crash (or damaged on disk) from a whole one.
//!
//! Version 2 (`TERNLOG2` segments, written since the store learnt to hold
//! 10M envelopes) covers the header too: the body length takes the low 24
//! bits of the length field and a check byte derived from it the high 8,
//! so a damaged length is seen as damage (and quarantined) rather than
//! read as a torn tail and cut. Version 1 segments (`TERNLOG1`) still read
//! as before ([`decode_legacy`]); they are never written again, and
//! copying forward moves what they hold into version 2 segments.

use super::{MailboxId, MessageId};

/// First bytes of every segment file written now; the version is in the
/// last byte.
pub const MAGIC: &[u8; 8] = b"TERNLOG2";
/// First bytes of a version 1 segment (length not covered by a check).
pub const LEGACY_MAGIC: &[u8; 8] = b"TERNLOG1";
/// Bytes before a record's body.
pub const HEADER: usize = 8;
const KIND_ENVELOPE: u8 = 1;
const KIND_REMOVE: u8 = 2;
const KIND_PAYLOAD: u8 = 3;
const KIND_REFS: u8 = 4;
/// Payload body bytes before the payload.
pub const PAYLOAD_FIXED: usize = 1 + 8 + 8 + 16;
/// REFS body bytes before the references.
const REFS_FIXED: usize = 1 + 8;
/// Bytes of one reference in a REFS record.
pub const REF_LEN: usize = 16 + 8;
/// Envelope body bytes before the payload.
pub const ENVELOPE_FIXED: usize = 1 + 16 + 8 + 8 + 8 + 16;
/// Largest body recovery accepts; anything longer is damage, not a record.
pub const MAX_BODY: usize = (1 << 24) - 1;
/// Largest body of a version 1 record.
const LEGACY_MAX_BODY: usize = 64 << 20;

/// The check byte of a version 2 length field.
fn length_check(len: u32) -> u32 {
    let b = len.to_be_bytes();
    (crc32fast::hash(&b[1..]) & 0xFF) ^ 0xA5
}

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

/// One envelope's payload as logged once for many mailboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadRecord<'a> {
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
    /// A payload held by the mailboxes of the REFS record after it.
    Payload(PayloadRecord<'a>),
    /// The mailboxes holding the PAYLOAD record at `payload_offset` of
    /// this segment, and their sequence numbers.
    Refs {
        /// Offset of the PAYLOAD record in this segment.
        payload_offset: u64,
        /// (mailbox, seq) for each holder.
        refs: Vec<(MailboxId, u64)>,
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
    // Bodies are far under MAX_BODY (the relay's envelope limit, removal
    // records chunked); a longer one would fail its check and be refused
    // at replay, never misread.
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX) & 0x00FF_FFFF;
    let len = len | (length_check(len) << 24);
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

/// Length of a PAYLOAD record with a payload of `payload_len` bytes.
pub fn payload_len(payload_len: usize) -> usize {
    HEADER + PAYLOAD_FIXED + payload_len
}

/// Append a PAYLOAD record to `out`.
pub fn put_payload(out: &mut Vec<u8>, p: &PayloadRecord<'_>) {
    let start = out.len();
    out.reserve(payload_len(p.payload.len()));
    out.extend_from_slice(&[0; HEADER]);
    out.push(KIND_PAYLOAD);
    out.extend_from_slice(&p.received_ms.to_be_bytes());
    out.extend_from_slice(&p.expires_ms.to_be_bytes());
    out.extend_from_slice(&p.message_id);
    out.extend_from_slice(p.payload);
    finish(out, start);
}

/// Append a REFS record to `out` for the PAYLOAD record at `payload_offset`.
pub fn put_refs(out: &mut Vec<u8>, payload_offset: u64, refs: &[(MailboxId, u64)]) {
    let start = out.len();
    out.reserve(HEADER + REFS_FIXED + refs.len() * REF_LEN);
    out.extend_from_slice(&[0; HEADER]);
    out.push(KIND_REFS);
    out.extend_from_slice(&payload_offset.to_be_bytes());
    for (mailbox, seq) in refs {
        out.extend_from_slice(mailbox);
        out.extend_from_slice(&seq.to_be_bytes());
    }
    finish(out, start);
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Decode the record at the start of `bytes` (version 2); returns it and
/// its length.
pub fn decode(bytes: &[u8]) -> Result<(Record<'_>, usize), Damage> {
    decode_in(bytes, false)
}

/// [`decode`] for a version 1 segment.
pub fn decode_legacy(bytes: &[u8]) -> Result<(Record<'_>, usize), Damage> {
    decode_in(bytes, true)
}

/// Decode a record of a version 1 (`legacy`) or version 2 segment.
pub fn decode_in(bytes: &[u8], legacy: bool) -> Result<(Record<'_>, usize), Damage> {
    let Some(header) = bytes.get(..HEADER) else {
        return Err(Damage::Truncated);
    };
    let field = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    let (len, max) = if legacy {
        (field as usize, LEGACY_MAX_BODY)
    } else {
        let len = field & 0x00FF_FFFF;
        if field >> 24 != length_check(len) {
            return Err(Damage::Corrupt("record header check"));
        }
        (len as usize, MAX_BODY)
    };
    if len == 0 || len > max {
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
        KIND_PAYLOAD if body.len() >= PAYLOAD_FIXED => {
            let mut message_id = [0u8; 16];
            message_id.copy_from_slice(&body[17..33]);
            Record::Payload(PayloadRecord {
                received_ms: u64_at(body, 1),
                expires_ms: u64_at(body, 9),
                message_id,
                payload: &body[PAYLOAD_FIXED..],
            })
        }
        KIND_REFS if body.len() > REFS_FIXED && (body.len() - REFS_FIXED) % REF_LEN == 0 => {
            let refs = body[REFS_FIXED..]
                .chunks_exact(REF_LEN)
                .map(|c| {
                    let mut m = [0u8; 16];
                    m.copy_from_slice(&c[..16]);
                    (m, u64_at(c, 16))
                })
                .collect();
            Record::Refs {
                payload_offset: u64_at(body, 1),
                refs,
            }
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
    fn shared_records_round_trip() {
        let mut out = Vec::new();
        let p = PayloadRecord {
            received_ms: 1,
            expires_ms: 2,
            message_id: [3; 16],
            payload: b"group",
        };
        put_payload(&mut out, &p);
        assert_eq!(out.len(), payload_len(5));
        let refs = vec![([1; 16], 7), ([2; 16], 1)];
        put_refs(&mut out, 8, &refs);
        assert_eq!(
            out.len(),
            payload_len(5) + HEADER + REFS_FIXED + 2 * REF_LEN
        );
        let (first, n) = decode(&out).unwrap();
        assert_eq!(first, Record::Payload(p));
        let (second, _) = decode(&out[n..]).unwrap();
        assert_eq!(
            second,
            Record::Refs {
                payload_offset: 8,
                refs
            }
        );
    }

    #[test]
    fn a_cut_record_is_truncated_and_a_flipped_bit_is_corrupt() {
        let mut out = Vec::new();
        put_envelope(&mut out, &sample(b"payload"));
        for cut in 0..out.len() {
            assert_eq!(decode(&out[..cut]), Err(Damage::Truncated), "cut at {cut}");
        }
        for i in 0..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x10;
            assert!(
                matches!(decode(&bad), Err(Damage::Corrupt(_))),
                "flip at {i}"
            );
        }
        assert!(matches!(decode(&[0; 16]), Err(Damage::Corrupt(_))));
    }

    #[test]
    fn version_1_records_still_decode() {
        let mut out = Vec::new();
        put_envelope(&mut out, &sample(b"old"));
        // A version 1 header: the plain body length.
        let body_len = (out.len() - HEADER) as u32;
        out[..4].copy_from_slice(&body_len.to_be_bytes());
        assert_eq!(
            decode_legacy(&out),
            Ok((Record::Envelope(sample(b"old")), out.len()))
        );
        assert!(matches!(decode(&out), Err(Damage::Corrupt(_))));
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
