//! Length-delimited frames: a 4-byte big-endian length, then that many bytes
//! of one protobuf message. Decoding never allocates more than the caller's
//! maximum, so a peer cannot make a reader buffer an oversize frame.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use thiserror::Error;

/// Bytes of the length prefix in front of every frame.
pub const LENGTH_PREFIX: usize = 4;

/// Why a frame could not be read.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix announces more than the reader accepts.
    #[error("frame of {size} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Announced length.
        size: usize,
        /// Largest length the reader accepts.
        max: usize,
    },
    /// The frame's bytes are not the protobuf message expected.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame")]
    Truncated,
}

/// Encode `msg` as one frame (length prefix and body).
pub fn encode_frame<M: Message>(msg: &M) -> Bytes {
    let mut buf = BytesMut::with_capacity(LENGTH_PREFIX + msg.encoded_len());
    encode_frame_into(msg, &mut buf);
    buf.freeze()
}

/// Append `msg` as one frame to `buf`, so many frames can leave in one write.
pub fn encode_frame_into<M: Message>(msg: &M, buf: &mut BytesMut) {
    let len = msg.encoded_len();
    buf.reserve(LENGTH_PREFIX + len);
    // A message longer than u32::MAX cannot be built under any limit Tern
    // has; saturate rather than wrap so the peer refuses it as too large.
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    // Encoding into a buffer reserved with `encoded_len` cannot run short.
    let _ = msg.encode(buf);
}

/// Take one whole frame body off the front of `buf`, if one is there.
///
/// Returns `Ok(None)` when more bytes are needed, and an error as soon as the
/// length prefix exceeds `max`, before any of the body is buffered.
pub fn decode_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, FrameError> {
    if buf.len() < LENGTH_PREFIX {
        return Ok(None);
    }
    let size = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if size > max {
        return Err(FrameError::TooLarge { size, max });
    }
    if buf.len() < LENGTH_PREFIX + size {
        // Nothing is reserved for what the prefix claims: the caller's
        // buffer grows only as bytes arrive.
        return Ok(None);
    }
    buf.advance(LENGTH_PREFIX);
    Ok(Some(buf.split_to(size).freeze()))
}

/// Decode a frame body as message `M`.
pub fn decode_message<M: Message + Default>(body: &[u8]) -> Result<M, FrameError> {
    M::decode(body).map_err(|e| FrameError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;
    use proptest::prelude::*;

    fn send(payload: Vec<u8>) -> pb::ClientFrame {
        pb::ClientFrame {
            frame: Some(pb::client_frame::Frame::Send(pb::Send {
                request_id: 7,
                mailbox_id: vec![1; 16].into(),
                token: vec![2; 32].into(),
                message_id: vec![3; 16].into(),
                payload: payload.into(),
                ephemeral: false,
            })),
        }
    }

    #[test]
    fn round_trip_one_frame() {
        let msg = send(b"hello".to_vec());
        let mut buf = BytesMut::from(&encode_frame(&msg)[..]);
        let body = decode_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(decode_message::<pb::ClientFrame>(&body).unwrap(), msg);
        assert!(buf.is_empty());
    }

    #[test]
    fn partial_frame_waits_for_more() {
        let bytes = encode_frame(&send(vec![9; 100]));
        let mut buf = BytesMut::from(&bytes[..10]);
        assert_eq!(decode_frame(&mut buf, 1024).unwrap(), None);
        buf.extend_from_slice(&bytes[10..]);
        assert!(decode_frame(&mut buf, 1024).unwrap().is_some());
    }

    #[test]
    fn oversize_length_is_refused_before_buffering() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert_eq!(
            decode_frame(&mut buf, 1 << 20),
            Err(FrameError::TooLarge {
                size: u32::MAX as usize,
                max: 1 << 20
            })
        );
    }

    #[test]
    fn garbage_body_is_malformed_not_a_panic() {
        assert!(matches!(
            decode_message::<pb::ClientFrame>(&[0xff, 0xff, 0xff]),
            Err(FrameError::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn frames_round_trip_in_any_split(payload in proptest::collection::vec(any::<u8>(), 0..2048), cut in 0usize..4096) {
            let a = send(payload.clone());
            let b = send(payload.iter().rev().cloned().collect());
            let mut wire = encode_frame(&a).to_vec();
            wire.extend_from_slice(&encode_frame(&b));
            let cut = cut.min(wire.len());
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            while let Some(body) = decode_frame(&mut buf, 1 << 16).unwrap() {
                got.push(decode_message::<pb::ClientFrame>(&body).unwrap());
            }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(body) = decode_frame(&mut buf, 1 << 16).unwrap() {
                got.push(decode_message::<pb::ClientFrame>(&body).unwrap());
            }
            prop_assert_eq!(got, vec![a, b]);
        }

        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(body)) = decode_frame(&mut buf, 256) {
                let _ = decode_message::<pb::ClientFrame>(&body);
                let _ = decode_message::<pb::ControlRequest>(&body);
            }
        }
    }
}
