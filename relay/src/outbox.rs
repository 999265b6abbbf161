//! A message stream's writing side, run by the stream's own driver task:
//! frames the machine gives are encoded into one buffer and handed to QUIC
//! at once, coalesced (up to [`WRITE_BATCH`] frames or
//! [`WRITE_BATCH_BYTES`] per write). QUIC takes a write at once unless the
//! peer's flow control is shut; then the rest waits here, and the driver
//! awaits [`Outbox::writable`] beside its other events, taking no more
//! frames meanwhile, so what the machine holds stays within its bounds.
//!
//! This replaced a writer task per stream fed through a channel: each push
//! then cost a wake-up of that task, and another of the driver when the
//! writer reported the bytes written (docs/performance.md, issue 14).

use crate::stream::MessageStream;
use bytes::{Bytes, BytesMut};
use quinn::{SendStream, WriteError};
use std::future::Future;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tern_protocol::frame::encode_frame_into;

/// Most frames coalesced into one write on a stream...
const WRITE_BATCH: usize = 256;
/// ...and most bytes, so a batch of large envelopes stays small.
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// The result of a future that is ready now, without waiting.
fn now_or_never<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// Encoded frames on their way into one QUIC stream.
pub struct Outbox {
    send: SendStream,
    buf: BytesMut,
    /// Encoded bytes QUIC has not taken yet (the rest of one write).
    unsent: Bytes,
    /// Push bytes (see [`MessageStream::handle_written`]) in `unsent`.
    unsent_pushed: usize,
}

impl Outbox {
    /// Write to `send`.
    pub fn new(send: SendStream) -> Self {
        Self {
            send,
            buf: BytesMut::new(),
            unsent: Bytes::new(),
            unsent_pushed: 0,
        }
    }

    /// Whether a write is waiting for QUIC to take it.
    pub fn blocked(&self) -> bool {
        !self.unsent.is_empty()
    }

    /// Write what the machine has to send, as far as QUIC takes it now;
    /// the push bytes QUIC took are reported to the machine. Returns
    /// whether any were (room freed in the push bounds). An error means
    /// the peer can no longer be written to.
    pub fn flush(&mut self, machine: &mut MessageStream) -> Result<bool, WriteError> {
        let mut freed = false;
        loop {
            if self.unsent.is_empty() {
                let mut pushed = 0;
                let mut frames = 0;
                while frames < WRITE_BATCH && self.buf.len() < WRITE_BATCH_BYTES {
                    let Some(f) = machine.poll_transmit() else {
                        break;
                    };
                    if MessageStream::is_push(&f) {
                        pushed += prost::Message::encoded_len(&f);
                    }
                    encode_frame_into(&f, &mut self.buf);
                    frames += 1;
                }
                if self.buf.is_empty() {
                    return Ok(freed);
                }
                self.unsent = self.buf.split().freeze();
                self.unsent_pushed = pushed;
            }
            let unsent = std::slice::from_mut(&mut self.unsent);
            match now_or_never(self.send.write_chunks(unsent)) {
                Some(Ok(_)) => {
                    if self.unsent.is_empty() {
                        freed |= self.taken(machine);
                    }
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(freed),
            }
        }
    }

    /// The whole of `unsent` was taken: its push bytes are free.
    fn taken(&mut self, machine: &mut MessageStream) -> bool {
        let n = std::mem::take(&mut self.unsent_pushed);
        if n > 0 {
            machine.handle_written(n);
        }
        n > 0
    }

    /// Resolves when QUIC took more of the blocked write; cancel-safe
    /// (nothing is written unless it resolves). Pending forever when
    /// nothing waits.
    pub async fn writable(&mut self) -> Result<(), WriteError> {
        if self.unsent.is_empty() {
            return std::future::pending().await;
        }
        self.send
            .write_chunks(std::slice::from_mut(&mut self.unsent))
            .await
            .map(|_| ())
    }

    /// After [`Self::writable`]: report the push bytes QUIC took, if the
    /// blocked write is now wholly taken.
    pub fn written(&mut self, machine: &mut MessageStream) {
        if self.unsent.is_empty() {
            self.taken(machine);
        }
    }

    /// Hand QUIC what is left (at most `within`: a peer that stopped
    /// reading is given up) and finish the stream.
    pub async fn finish(mut self, within: Duration) {
        let mut rest: Vec<Bytes> = [std::mem::take(&mut self.unsent), self.buf.split().freeze()]
            .into_iter()
            .filter(|b| !b.is_empty())
            .collect();
        let sent = tokio::time::timeout(within, self.send.write_all_chunks(&mut rest)).await;
        if matches!(sent, Ok(Ok(()))) {
            let _ = self.send.finish();
        }
    }
}
