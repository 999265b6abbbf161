//! One open direct path: the QUIC connection to a contact's device and
//! the message streams on it. Each side sends on one long-lived
//! bidirectional stream of its own (opened on first use), so messages
//! arrive in the order they were sealed (an Olm chain keeps only a few
//! skipped keys); the receiver answers each with a [`pb::DirectAck`] on
//! the same stream once what it carried is durable. The sender waits for
//! those acks ([`Path::send_batch`]): an item counts as handed over only
//! when acked, and whatever is not goes through the relay.

use crate::store::ContactId;
use bytes::BytesMut;
use quinn::{RecvStream, SendStream};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tern_protocol::frame::{decode_message, encode_frame_into};
use tern_protocol::io::{write_frame, FrameReader};
use tern_protocol::{limits, pb};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

/// Largest frame on a direct path (a sealed payload and a few fields).
pub(crate) const MAX_FRAME: usize = limits::DEFAULT_MAX_FRAME;
/// How long a batch waits for its next ack before it gives up on the path.
/// (A peer that is gone is noticed sooner: its connection times out.)
const ACK_IDLE: Duration = Duration::from_secs(15);
/// How long opening the message stream may take.
const OPEN_WAIT: Duration = Duration::from_secs(3);

/// One item to hand over directly: its message id and sealed payload.
pub(crate) struct DirectItem {
    pub(crate) message_id: [u8; 16],
    pub(crate) payload: Vec<u8>,
    pub(crate) ephemeral: bool,
}

/// Something that arrived on a path for the running client to store.
pub(crate) struct Arrival {
    pub(crate) message: pb::DirectMessage,
    /// Send `()` once what it carried is durable (or dropped for good):
    /// the peer is then acked. Dropped unsent: no ack; the peer sends it
    /// through the relay.
    pub(crate) stored: oneshot::Sender<()>,
}

type Waiting = Arc<Mutex<HashMap<[u8; 16], oneshot::Sender<()>>>>;

/// An open direct path to one contact.
pub(crate) struct Path {
    pub(crate) conn: quinn::Connection,
    pub(crate) contact: ContactId,
    /// Which of two paths both sides keep (lower wins): 0 if the side with
    /// the lower identity key dialed it, then the session's exporter, so
    /// both sides pick the same one.
    pub(crate) rank: (u8, [u8; 32]),
    out: tokio::sync::Mutex<Option<SendStream>>,
    waiting: Waiting,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Path {
    pub(crate) fn new(conn: quinn::Connection, contact: ContactId, rank: (u8, [u8; 32])) -> Self {
        Self {
            conn,
            contact,
            rank,
            out: tokio::sync::Mutex::new(None),
            waiting: Arc::default(),
        }
    }

    /// Round-trip time as QUIC measures it, in milliseconds.
    pub(crate) fn rtt_ms(&self) -> u64 {
        self.conn.rtt().as_millis() as u64
    }

    /// Whether the connection is still up.
    pub(crate) fn is_open(&self) -> bool {
        self.conn.close_reason().is_none()
    }

    /// Hand `items` over, in order, and wait for their acks; one flag per
    /// item, true when the peer acknowledged it (it is stored on the
    /// peer's device). A path that fails or stays silent leaves the rest
    /// false.
    pub(crate) async fn send_batch(&self, items: &[DirectItem]) -> Vec<bool> {
        let mut acks = Vec::with_capacity(items.len());
        {
            let mut out = self.out.lock().await;
            if out.is_none() {
                match tokio::time::timeout(OPEN_WAIT, self.open()).await {
                    Ok(Ok(s)) => *out = Some(s),
                    _ => return vec![false; items.len()],
                }
            }
            let mut bytes = BytesMut::new();
            for item in items {
                let (tx, rx) = oneshot::channel();
                lock(&self.waiting).insert(item.message_id, tx);
                acks.push(rx);
                let m = pb::DirectMessage {
                    message_id: item.message_id.to_vec().into(),
                    payload: item.payload.clone().into(),
                    ephemeral: item.ephemeral,
                };
                encode_frame_into(&m, &mut bytes);
            }
            let Some(stream) = out.as_mut() else {
                return vec![false; items.len()];
            };
            if let Err(e) = stream.write_chunk(bytes.freeze()).await {
                debug!("direct path write failed: {e}");
                *out = None;
                return vec![false; items.len()];
            }
        }
        // Acks come in order: wait while they keep coming, and give up on
        // a path silent for ACK_IDLE (a slow peer is not a dead one).
        let mut got = Vec::with_capacity(items.len());
        let mut alive = true;
        for rx in acks {
            let ok = alive && matches!(tokio::time::timeout(ACK_IDLE, rx).await, Ok(Ok(())));
            alive &= ok;
            got.push(ok);
        }
        for (item, ok) in items.iter().zip(&got) {
            if !ok {
                lock(&self.waiting).remove(&item.message_id);
            }
        }
        got
    }

    /// Open our message stream and start reading the peer's acks on it.
    async fn open(&self) -> Result<SendStream, quinn::ConnectionError> {
        let (send, recv) = self.conn.open_bi().await?;
        tokio::spawn(read_acks(recv, Arc::clone(&self.waiting)));
        Ok(send)
    }

    /// Take the peer's message streams and pass what arrives to `arrivals`
    /// until the connection ends.
    pub(crate) async fn serve(self: Arc<Self>, arrivals: mpsc::Sender<Arrival>) {
        while let Ok((send, recv)) = self.conn.accept_bi().await {
            tokio::spawn(serve_stream(send, recv, arrivals.clone()));
        }
    }
}

/// Read acks and wake their senders; when the stream ends, every sender
/// still waiting is told no (its item goes through the relay).
async fn read_acks(recv: RecvStream, waiting: Waiting) {
    let mut frames = FrameReader::new(recv, MAX_FRAME);
    while let Ok(Some(body)) = frames.next().await {
        let Ok(ack) = decode_message::<pb::DirectAck>(&body) else {
            break;
        };
        let Ok(id) = <[u8; 16]>::try_from(&ack.message_id[..]) else {
            break;
        };
        if let Some(tx) = lock(&waiting).remove(&id) {
            let _ = tx.send(());
        }
    }
    lock(&waiting).clear();
}

/// One of the peer's message streams: each message goes to the running
/// client, and its ack goes back, in order, once the client stored it.
async fn serve_stream(mut send: SendStream, recv: RecvStream, arrivals: mpsc::Sender<Arrival>) {
    let (acks, mut pending) = mpsc::unbounded_channel::<([u8; 16], oneshot::Receiver<()>)>();
    let writer = tokio::spawn(async move {
        while let Some((id, stored)) = pending.recv().await {
            if stored.await.is_err() {
                // Not stored (our store failed): no ack, the peer sends it
                // through the relay.
                continue;
            }
            let ack = pb::DirectAck {
                message_id: id.to_vec().into(),
            };
            if write_frame(&mut send, &ack).await.is_err() {
                return;
            }
        }
        let _ = send.finish();
    });
    let mut frames = FrameReader::new(recv, MAX_FRAME);
    while let Ok(Some(body)) = frames.next().await {
        let Ok(message) = decode_message::<pb::DirectMessage>(&body) else {
            break;
        };
        let Ok(id) = <[u8; 16]>::try_from(&message.message_id[..]) else {
            break;
        };
        let (stored, rx) = oneshot::channel();
        if acks.send((id, rx)).is_err() {
            break;
        }
        let arrival = Arrival { message, stored };
        if arrivals.send(arrival).await.is_err() {
            break;
        }
    }
    drop(acks);
    let _ = writer.await;
}
