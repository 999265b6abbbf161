//! Reading and writing frames over tokio streams (QUIC streams in Tern).
//! Only the length prefix and body are read; what a body means is left to the
//! caller, which decodes it with [`crate::frame::decode_message`].

use crate::frame::{decode_frame, encode_frame, FrameError, LENGTH_PREFIX};
use bytes::{Bytes, BytesMut};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes reserved up front for a frame body; larger bodies grow as they arrive.
const INITIAL_BODY_CAPACITY: usize = 16 * 1024;
/// Room made in a [`FrameReader`]'s buffer before each read.
const READ_CHUNK: usize = 16 * 1024;

/// Why reading a frame from a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadFrameError {
    /// The frame itself was bad.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The stream failed underneath.
    #[error("stream read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Read one frame body. `Ok(None)` means the stream ended cleanly between
/// frames; a stream ending inside a frame is [`FrameError::Truncated`].
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Option<Bytes>, ReadFrameError> {
    let mut prefix = [0u8; LENGTH_PREFIX];
    let mut got = 0;
    while got < LENGTH_PREFIX {
        let n = reader.read(&mut prefix[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated.into())
            };
        }
        got += n;
    }
    let size = u32::from_be_bytes(prefix) as usize;
    if size > max {
        return Err(FrameError::TooLarge { size, max }.into());
    }
    // Grow the buffer as bytes arrive rather than allocating what the
    // prefix claims: a peer announcing a large frame and sending nothing
    // costs nothing.
    let mut body = Vec::with_capacity(size.min(INITIAL_BODY_CAPACITY));
    let got = (&mut *reader)
        .take(size as u64)
        .read_to_end(&mut body)
        .await?;
    if got < size {
        return Err(FrameError::Truncated.into());
    }
    Ok(Some(Bytes::from(body)))
}

/// Reads frames off a long-lived stream through one buffer: a single read
/// from the stream usually brings many small frames, where [`read_frame`]
/// costs two reads a frame. Like it, the buffer grows only as bytes arrive,
/// never to what a length prefix claims, and an oversize prefix is refused
/// before any of its body is buffered.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Read frames of at most `max` bytes from `inner`.
    pub fn new(inner: R, max: usize) -> Self {
        Self {
            inner,
            buf: BytesMut::new(),
            max,
        }
    }

    /// The next frame body. `Ok(None)` means the stream ended cleanly
    /// between frames; ending inside one is [`FrameError::Truncated`].
    pub async fn next(&mut self) -> Result<Option<Bytes>, ReadFrameError> {
        loop {
            if let Some(body) = decode_frame(&mut self.buf, self.max)? {
                return Ok(Some(body));
            }
            self.buf.reserve(READ_CHUNK);
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated.into())
                };
            }
        }
    }
}

/// Write `msg` as one frame.
pub async fn write_frame<W: AsyncWrite + Unpin, M: Message>(
    writer: &mut W,
    msg: &M,
) -> std::io::Result<()> {
    writer.write_all(&encode_frame(msg)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    #[tokio::test]
    async fn reads_what_was_written_then_eof() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let msg = pb::ControlRequest {
            request: Some(pb::control_request::Request::Challenge(
                pb::ChallengeRequest {},
            )),
        };
        let m2 = msg.clone();
        tokio::spawn(async move {
            write_frame(&mut a, &m2).await.unwrap();
        });
        let body = read_frame(&mut b, 1024).await.unwrap().unwrap();
        assert_eq!(
            crate::frame::decode_message::<pb::ControlRequest>(&body).unwrap(),
            msg
        );
        assert!(read_frame(&mut b, 1024).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn frame_reader_splits_many_frames_from_one_read() {
        let msg = |n: u64| pb::Ack {
            seqs: vec![n; n as usize],
        };
        let mut bytes = Vec::new();
        for n in 0..50 {
            bytes.extend_from_slice(&encode_frame(&msg(n)));
        }
        let mut reader = FrameReader::new(&bytes[..], 1024);
        for n in 0..50 {
            let body = reader.next().await.unwrap().unwrap();
            assert_eq!(
                crate::frame::decode_message::<pb::Ack>(&body).unwrap(),
                msg(n)
            );
        }
        assert!(reader.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn frame_reader_refuses_oversize_and_truncated_frames() {
        let mut reader = FrameReader::new(&[0u8, 0, 4, 1, 9][..], 1024);
        assert!(matches!(
            reader.next().await,
            Err(ReadFrameError::Frame(FrameError::TooLarge {
                size: 1025,
                max: 1024
            }))
        ));
        let mut reader = FrameReader::new(&[0u8, 0, 0, 10, 1, 2][..], 1024);
        assert!(matches!(
            reader.next().await,
            Err(ReadFrameError::Frame(FrameError::Truncated))
        ));
    }

    #[tokio::test]
    async fn truncated_frame_is_an_error() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0, 0, 10, 1, 2]).await.unwrap();
        drop(a);
        assert!(matches!(
            read_frame(&mut b, 1024).await,
            Err(ReadFrameError::Frame(FrameError::Truncated))
        ));
    }
}
