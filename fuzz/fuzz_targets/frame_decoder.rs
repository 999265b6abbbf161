//! The length-delimited frame decoder, as the relay and the client run it on
//! a QUIC stream: bytes arrive in arbitrary chunks, bodies are decoded as
//! every message type a peer may send. The async reader must agree with the
//! buffer decoder frame for frame.
//!
//! Input: `[max/8, chunk-1, stream bytes...]`.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tern_protocol::frame::{decode_frame, decode_message, FrameError};
use tern_protocol::io::{read_frame, ReadFrameError};
use tern_protocol::pb;

fuzz_target!(|data: &[u8]| {
    let [max, chunk, stream @ ..] = data else {
        return;
    };
    let max = usize::from(*max) * 8;
    let chunk = usize::from(*chunk) + 1;

    // The buffer decoder, fed `chunk` bytes at a time.
    let mut buf = BytesMut::new();
    let mut bodies: Vec<Bytes> = Vec::new();
    let mut error = None;
    'feed: for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decode_frame(&mut buf, max) {
                Ok(Some(body)) => {
                    assert!(body.len() <= max, "body of {} over max {max}", body.len());
                    bodies.push(body);
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(matches!(e, FrameError::TooLarge { .. }), "{e:?}");
                    error = Some(e);
                    break 'feed;
                }
            }
        }
    }

    for body in &bodies {
        let _ = decode_message::<pb::ClientFrame>(body);
        let _ = decode_message::<pb::ControlRequest>(body);
        let _ = decode_message::<pb::RelayFrame>(body);
        let _ = decode_message::<pb::ControlResponse>(body);
    }

    // The async reader over the same bytes. A byte slice is always ready, so
    // one poll with a no-op waker runs each read to completion.
    let mut reader: &[u8] = stream;
    let mut cx = Context::from_waker(Waker::noop());
    let mut read = Vec::new();
    let end = loop {
        let result = match pin!(read_frame(&mut reader, max)).as_mut().poll(&mut cx) {
            Poll::Ready(result) => result,
            Poll::Pending => panic!("read_frame pending on a byte slice"),
        };
        match result {
            Ok(Some(body)) => read.push(body),
            other => break other,
        }
    };
    assert_eq!(read, bodies, "read_frame and decode_frame disagree");
    match (end, error) {
        (Err(ReadFrameError::Frame(a)), Some(b)) => assert_eq!(a, b),
        // Clean end: the buffer decoder has nothing left over.
        (Ok(None), None) => assert!(buf.is_empty(), "{} bytes left over", buf.len()),
        // Truncated: the buffer decoder is still waiting for the rest.
        (Err(ReadFrameError::Frame(FrameError::Truncated)), None) => assert!(!buf.is_empty()),
        (end, error) => panic!("read_frame ended with {end:?}, decode_frame with {error:?}"),
    }
});
