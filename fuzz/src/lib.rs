//! Shared checks for Tern's fuzz targets (see `fuzz/README.md`).
//!
//! The targets in `fuzz_targets/` feed libFuzzer's bytes to everything Tern
//! parses from a peer or from disk. The properties checked here are the ones
//! every decoder must hold beyond "does not panic": what decodes re-encodes
//! to something that decodes to the same value, and re-encoding is stable.

use prost::Message;

/// Decode `data` as `M`; if it decodes, check the encode/decode round trip
/// and that framing it and unframing it gives back the same bytes.
pub fn round_trip<M>(data: &[u8]) -> Option<M>
where
    M: Message + Default + PartialEq + std::fmt::Debug,
{
    let msg = tern_protocol::frame::decode_message::<M>(data).ok()?;
    let encoded = msg.encode_to_vec();
    assert_eq!(encoded.len(), msg.encoded_len(), "encoded_len disagrees");
    let again = tern_protocol::frame::decode_message::<M>(&encoded)
        .unwrap_or_else(|e| panic!("re-encoded message does not decode: {e}"));
    assert_eq!(msg, again, "round trip changed the message");
    assert_eq!(encoded, again.encode_to_vec(), "re-encoding is not stable");

    let frame = tern_protocol::encode_frame(&msg);
    let mut buf = bytes::BytesMut::from(&frame[..]);
    let body = tern_protocol::decode_frame(&mut buf, encoded.len())
        .unwrap_or_else(|e| panic!("own frame refused: {e}"))
        .unwrap_or_else(|| panic!("own frame incomplete"));
    assert_eq!(&body[..], &encoded[..]);
    assert!(buf.is_empty());
    Some(msg)
}

/// The store key every fixture and pickle seed is encrypted under.
pub const FIXTURE_STORE_KEY: [u8; 32] = [7u8; 32];
/// The seal key sealed seeds are addressed to.
pub const FIXTURE_SEAL_KEY: [u8; 32] = [7u8; 32];
/// `aad` of account pickles (documented in tern-crypto's `account` module).
pub const ACCOUNT_PICKLE_AAD: &[u8] = b"tern/1 account pickle";
/// `aad` of session pickles (documented in tern-crypto's `session` module).
pub const SESSION_PICKLE_AAD: &[u8] = b"tern/1 session pickle";
