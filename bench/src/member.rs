//! A group member as the load generator runs it: one task per member that
//! reads its subscription's frames straight off the QUIC stream, decodes
//! each, and acknowledges what it got as the client does (a batch of
//! [`ACK_BATCH`], or once the relay has been quiet for [`ACK_IDLE`]).
//!
//! The client library's `MessageStream` reads frames on a task of its own
//! and passes them through a channel: one more task wake-up per envelope,
//! which 1,000 members on the relay's two cores pay 1,000 times per group
//! message and a client with one conversation never feels, so the bench
//! does without it. What reaches the relay is the same: the subscription,
//! and acks of the same size and timing.

use anyhow::anyhow;
use bytes::BytesMut;
use prost::Message;
use std::time::Duration;
use tern_client::transport::RelayLink;
use tern_protocol::frame::encode_frame_into;
use tern_protocol::io::FrameReader;
use tern_protocol::limits::DEFAULT_MAX_FRAME;
use tern_protocol::pb::{self, client_frame, relay_frame::Frame};
use tern_protocol::STREAM_MESSAGES;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Members acknowledge after this many envelopes...
pub const ACK_BATCH: usize = 64;
/// ...or once the relay has been quiet this long (as the client does).
pub const ACK_IDLE: Duration = Duration::from_millis(20);

/// One member's subscribed message stream.
pub struct Member<S, R> {
    send: S,
    frames: FrameReader<R>,
}

/// Open the message stream of `link` (authenticated) and subscribe with a
/// push window of `window`.
pub async fn subscribe(
    link: &RelayLink,
    window: u32,
) -> anyhow::Result<Member<impl AsyncWrite + Unpin, impl AsyncRead + Unpin>> {
    Member::subscribe(link.open_raw_stream().await?, window).await
}

impl<S: AsyncWrite + Unpin, R: AsyncRead + Unpin> Member<S, R> {
    async fn subscribe((mut send, recv): (S, R), window: u32) -> anyhow::Result<Self> {
        let mut buf = BytesMut::from(&[STREAM_MESSAGES][..]);
        let sub = pb::ClientFrame {
            frame: Some(client_frame::Frame::Subscribe(pb::Subscribe { window })),
        };
        encode_frame_into(&sub, &mut buf);
        send.write_all(&buf).await?;
        Ok(Self {
            send,
            frames: FrameReader::new(recv, DEFAULT_MAX_FRAME),
        })
    }

    async fn ack(&mut self, acks: &mut Vec<u64>, buf: &mut BytesMut) -> anyhow::Result<()> {
        let frame = pb::ClientFrame {
            frame: Some(client_frame::Frame::Ack(pb::Ack {
                seqs: std::mem::take(acks),
            })),
        };
        encode_frame_into(&frame, buf);
        self.send.write_all(&buf.split()).await?;
        Ok(())
    }

    /// Take envelopes until the stream ends, calling `got` with each
    /// one's message id and acking them; `acked` is told how many each
    /// ack covered once it is written.
    pub async fn run(
        mut self,
        mut got: impl FnMut(&[u8]),
        mut acked: impl FnMut(u64),
    ) -> anyhow::Result<()> {
        let mut acks = Vec::new();
        let mut buf = BytesMut::new();
        loop {
            // Cancel-safe: a timeout never loses half a frame.
            let next = if acks.is_empty() {
                Ok(self.frames.next().await)
            } else {
                tokio::time::timeout(ACK_IDLE, self.frames.next()).await
            };
            let body = match next {
                Ok(Ok(Some(body))) => body,
                Ok(Ok(None)) => return Ok(()),
                Ok(Err(e)) => return Err(anyhow!("reading the stream: {e}")),
                Err(_) => {
                    let n = acks.len() as u64;
                    self.ack(&mut acks, &mut buf).await?;
                    acked(n);
                    continue;
                }
            };
            if let Ok(pb::RelayFrame {
                frame: Some(Frame::Envelope(e)),
            }) = pb::RelayFrame::decode(body)
            {
                got(&e.message_id);
                acks.push(e.seq);
                if acks.len() >= ACK_BATCH {
                    let n = acks.len() as u64;
                    self.ack(&mut acks, &mut buf).await?;
                    acked(n);
                }
            }
        }
    }
}
