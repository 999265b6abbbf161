//! One QUIC connection: accepts its streams and drives them. A stream starts
//! with one byte naming its kind: [`STREAM_CONTROL`] (one request, one
//! response) or [`STREAM_MESSAGES`] (the long-lived message stream). This
//! module only decodes frames, calls [`RelayCore`], awaits durability and
//! writes answers back.

use crate::clock::Clock;
use crate::core::{Accepted, ConnAuth, RelayCore};
use crate::hub::Hub;
use crate::rate::{ConnectionRate, ConnectionSlots};
use crate::store::{MailboxId, MailboxStore};
use bytes::BytesMut;
use quinn::{RecvStream, SendStream};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tern_protocol::frame::{decode_message, encode_frame_into, FrameError};
use tern_protocol::io::{read_frame, write_frame, FrameReader, ReadFrameError};
use tern_protocol::pb::{self, client_frame::Frame as In, relay_frame::Frame as Out};
use tern_protocol::{limits, ErrorCode, WireError};
use tokio::sync::{mpsc, Notify};
use tracing::{debug, Instrument};

use tern_protocol::{STREAM_CONTROL, STREAM_MESSAGES};

/// How long a new stream may take to say what kind it is.
const STREAM_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Envelopes fetched from the store per batch while draining a mailbox.
const DRAIN_BATCH: usize = 128;
/// Frames queued for one stream's writer.
const WRITE_QUEUE: usize = 256;
/// Sends awaiting durability on one stream before reading pauses.
const DURABILITY_QUEUE: usize = 1024;

/// What one connection's streams share.
struct ConnState {
    /// What the connection has proven.
    auth: Mutex<ConnAuth>,
    /// One subscription per connection, so a peer cannot multiply the
    /// envelopes queued for it by opening more streams.
    subscribed: AtomicBool,
    /// Frames and requests per second on this connection.
    rate: ConnectionRate,
}

/// What every connection shares.
pub struct Shared<S, C> {
    /// The protocol core.
    pub core: RelayCore<S, C>,
    /// Subscriptions.
    pub hub: Arc<Hub>,
    /// Connections open per address.
    pub slots: ConnectionSlots,
}

/// Drive one connection until it closes.
pub async fn serve<S: MailboxStore, C: Clock>(shared: Arc<Shared<S, C>>, conn: quinn::Connection) {
    let mut exporter = [0u8; 32];
    if conn
        .export_keying_material(&mut exporter, tern_protocol::AUTH_EXPORTER_LABEL, b"")
        .is_err()
    {
        conn.close(1u32.into(), b"no keying material");
        return;
    }
    let state = Arc::new(ConnState {
        auth: Mutex::new(ConnAuth::new(conn.remote_address().ip())),
        subscribed: AtomicBool::new(false),
        rate: shared.core.rates().connection(),
    });
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                debug!("connection ended: {e}");
                return;
            }
        };
        // Opening a stream counts against the connection's rate; over it,
        // the connection waits before it gets another.
        let limited = state.rate.check().err();
        throttle(limited.as_ref()).await;
        let (shared, state) = (Arc::clone(&shared), Arc::clone(&state));
        let span = tracing::debug_span!("stream", id = %send.id());
        tokio::spawn(
            async move { stream(shared, state, exporter, send, recv).await }.instrument(span),
        );
    }
}

async fn stream<S: MailboxStore, C: Clock>(
    shared: Arc<Shared<S, C>>,
    state: Arc<ConnState>,
    exporter: [u8; 32],
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let mut kind = [0u8; 1];
    match tokio::time::timeout(STREAM_HEADER_TIMEOUT, recv.read_exact(&mut kind)).await {
        Ok(Ok(())) => {}
        _ => {
            let _ = send.reset(1u32.into());
            return;
        }
    }
    match kind[0] {
        STREAM_CONTROL => control(&shared, &state, &exporter, send, recv).await,
        STREAM_MESSAGES => messages(shared, state, send, recv).await,
        _ => {
            let frame = error_frame(WireError::new(
                ErrorCode::Unsupported,
                "unknown stream kind",
            ));
            let _ = write_frame(&mut send, &frame).await;
            let _ = send.finish();
        }
    }
}

/// Over its rate, a connection's reading pauses until it is allowed again
/// (at most a second), so QUIC flow control pushes back on the peer.
async fn throttle(limited: Option<&WireError>) {
    if let Some(e) = limited {
        let pause = Duration::from_millis(e.retry_after_ms.clamp(1, 1_000));
        tokio::time::sleep(pause).await;
    }
}

fn error_frame(e: WireError) -> pb::RelayFrame {
    pb::RelayFrame {
        frame: Some(Out::Error(e.into())),
    }
}

fn read_error(e: &ReadFrameError) -> Option<WireError> {
    match e {
        ReadFrameError::Frame(FrameError::TooLarge { size, max }) => Some(WireError::new(
            ErrorCode::FrameTooLarge,
            format!("frame of {size} bytes exceeds the maximum of {max}"),
        )),
        ReadFrameError::Frame(FrameError::Malformed(m)) => {
            Some(WireError::new(ErrorCode::Malformed, m.clone()))
        }
        _ => None,
    }
}

async fn control<S: MailboxStore, C: Clock>(
    shared: &Shared<S, C>,
    state: &ConnState,
    exporter: &[u8; 32],
    mut send: SendStream,
    mut recv: RecvStream,
) {
    use pb::control_response::Response;
    let max = shared.core.limits().max_frame_bytes;
    // The request must arrive whole within the header timeout, so a stream
    // that announces a frame and trickles it cannot pin a buffer forever.
    let Ok(read) = tokio::time::timeout(STREAM_HEADER_TIMEOUT, read_frame(&mut recv, max)).await
    else {
        let _ = send.reset(1u32.into());
        return;
    };
    if let Err(e) = state.rate.check() {
        let response = pb::ControlResponse {
            response: Some(Response::Error(e.into())),
        };
        let _ = write_frame(&mut send, &response).await;
        let _ = send.finish();
        return;
    }
    let response = match read {
        Ok(Some(body)) => match decode_message::<pb::ControlRequest>(&body) {
            Ok(req) => {
                let writes = !matches!(
                    req.request,
                    Some(pb::control_request::Request::Challenge(_))
                        | Some(pb::control_request::Request::Authenticate(_))
                );
                let resp = match state.auth.lock() {
                    Ok(mut a) => shared.core.control(&mut a, exporter, req),
                    Err(_) => return,
                };
                let ok = !matches!(resp.response, Some(Response::Error(_)));
                if writes && ok {
                    if let Err(e) = shared.core.durable().await {
                        tracing::warn!("control write not durable: {e}");
                        let e =
                            WireError::new(ErrorCode::StorageUnavailable, "storage unavailable")
                                .retry_after(1_000);
                        pb::ControlResponse {
                            response: Some(Response::Error(e.into())),
                        }
                    } else {
                        resp
                    }
                } else {
                    resp
                }
            }
            Err(e) => pb::ControlResponse {
                response: Some(Response::Error(
                    WireError::new(ErrorCode::Malformed, e.to_string()).into(),
                )),
            },
        },
        Ok(None) => return,
        Err(e) => match read_error(&e) {
            Some(w) => pb::ControlResponse {
                response: Some(Response::Error(w.into())),
            },
            None => return,
        },
    };
    let _ = write_frame(&mut send, &response).await;
    let _ = send.finish();
}

/// A reply waiting for the store to be durable before it is sent.
struct PendingReply {
    /// The reply may leave only once the store is durable.
    durable: bool,
    frame: pb::RelayFrame,
    wake: Option<MailboxId>,
}

/// The window state shared by a message stream's reader and its pusher.
#[derive(Default)]
struct Window {
    in_flight: Mutex<BTreeSet<u64>>,
    opened: Notify,
}

/// Most frames coalesced into one write on a stream...
const WRITE_BATCH: usize = 256;
/// ...and most bytes, so a batch of large envelopes stays small.
const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// Most replies released by one durability wait.
const REPLY_BATCH: usize = 1024;

async fn messages<S: MailboxStore, C: Clock>(
    shared: Arc<Shared<S, C>>,
    state: Arc<ConnState>,
    mut send: SendStream,
    recv: RecvStream,
) {
    // Frames queued while a write is under way leave together in the next.
    let (out_tx, mut out_rx) = mpsc::channel::<pb::RelayFrame>(WRITE_QUEUE);
    let writer = tokio::spawn(async move {
        let mut buf = BytesMut::new();
        while let Some(frame) = out_rx.recv().await {
            encode_frame_into(&frame, &mut buf);
            for _ in 1..WRITE_BATCH {
                if buf.len() >= WRITE_BATCH_BYTES {
                    break;
                }
                match out_rx.try_recv() {
                    Ok(frame) => encode_frame_into(&frame, &mut buf),
                    Err(_) => break,
                }
            }
            if send.write_chunk(buf.split().freeze()).await.is_err() {
                return;
            }
        }
        let _ = send.finish();
    });

    // Replies leave in the order their sends arrived, after the flush that
    // made them durable. Every reply queued when one is taken shares one
    // durability wait: a wait begun after their writes covers them all.
    let (reply_tx, mut reply_rx) = mpsc::channel::<PendingReply>(DURABILITY_QUEUE);
    let hub = Arc::clone(&shared.hub);
    let replies_out = out_tx.clone();
    let replier_shared = Arc::clone(&shared);
    let replier = tokio::spawn(async move {
        let mut batch = Vec::new();
        let mut woken: Vec<MailboxId> = Vec::new();
        while let Some(first) = reply_rx.recv().await {
            batch.push(first);
            while batch.len() < REPLY_BATCH {
                match reply_rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            let failed = if batch.iter().any(|p| p.durable) {
                replier_shared.core.durable().await.err()
            } else {
                None
            };
            if let Some(e) = &failed {
                tracing::warn!("sends not durable: {e}");
            }
            for mut p in batch.drain(..) {
                if p.durable && failed.is_some() {
                    if let Some(Out::SendResult(r)) = &mut p.frame.frame {
                        r.seq = 0;
                        r.duplicate = false;
                        r.error = Some(
                            WireError::new(ErrorCode::StorageUnavailable, "storage unavailable")
                                .retry_after(1_000)
                                .into(),
                        );
                    }
                    p.wake = None;
                }
                if let Some(m) = p.wake {
                    if !woken.contains(&m) {
                        woken.push(m);
                        hub.stored(&m);
                    }
                }
                if replies_out.send(p.frame).await.is_err() {
                    return;
                }
            }
            woken.clear();
        }
    });

    let window = Arc::new(Window::default());
    let mut pusher: Option<tokio::task::JoinHandle<()>> = None;
    let max = shared.core.limits().max_frame_bytes;
    let mut frames = FrameReader::new(recv, max);
    loop {
        let body = match frames.next().await {
            Ok(Some(body)) => body,
            Ok(None) => break,
            Err(e) => {
                if let Some(w) = read_error(&e) {
                    let _ = out_tx.send(error_frame(w)).await;
                }
                // After an oversize length the stream cannot be resynced.
                break;
            }
        };
        // Every frame counts against the connection's rate, garbage too.
        let limited = state.rate.check().err();
        let frame = match decode_message::<pb::ClientFrame>(&body) {
            Ok(pb::ClientFrame { frame: Some(f) }) => f,
            Ok(pb::ClientFrame { frame: None }) => {
                let e = WireError::new(ErrorCode::Unsupported, "unknown or empty frame");
                // A peer that does not read its errors gets no more reads.
                if out_tx.send(error_frame(e)).await.is_err() {
                    break;
                }
                throttle(limited.as_ref()).await;
                continue;
            }
            Err(e) => {
                let e = WireError::new(ErrorCode::Malformed, e.to_string());
                if out_tx.send(error_frame(e)).await.is_err() {
                    break;
                }
                throttle(limited.as_ref()).await;
                continue;
            }
        };
        // Over the rate, a send is refused (its sender retries later); acks
        // and subscriptions are still applied, since dropping an ack would
        // only shrink the window and redeliver. Either way reading pauses.
        if let (Some(e), In::Send(send)) = (&limited, &frame) {
            let reply = PendingReply {
                durable: false,
                frame: send_result(send.request_id, Err(e.clone())),
                wake: None,
            };
            if reply_tx.send(reply).await.is_err() {
                break;
            }
            throttle(limited.as_ref()).await;
            continue;
        }
        match frame {
            In::Send(s) => {
                let reply = send_reply(&shared, &s);
                if reply_tx.send(reply).await.is_err() {
                    break;
                }
            }
            In::Ack(a) => {
                let owner = state.auth.lock().map(|a| a.mailbox()).unwrap_or(None);
                let result = match state.auth.lock() {
                    Ok(conn) => shared.core.ack(&conn, &a.seqs),
                    Err(_) => break,
                };
                match result {
                    Ok(_) => {
                        if let Ok(mut f) = window.in_flight.lock() {
                            for s in &a.seqs {
                                f.remove(s);
                            }
                        }
                        window.opened.notify_one();
                    }
                    Err(e) => {
                        debug!(owner = ?owner.map(short), "ack refused: {e}");
                        let _ = out_tx.send(error_frame(e)).await;
                    }
                }
            }
            In::Subscribe(sub) => {
                let Some(mailbox) = state.auth.lock().map(|a| a.mailbox()).unwrap_or(None) else {
                    let e = WireError::new(ErrorCode::NotAuthenticated, "authenticate first");
                    let _ = out_tx.send(error_frame(e)).await;
                    continue;
                };
                if pusher.is_some() {
                    continue;
                }
                if state.subscribed.swap(true, Ordering::SeqCst) {
                    let e = WireError::new(
                        ErrorCode::Unsupported,
                        "this connection is already subscribed on another stream",
                    );
                    let _ = out_tx.send(error_frame(e)).await;
                    continue;
                }
                let size = match sub.window {
                    0 => shared.core.limits().push_window,
                    n => n.min(limits::MAX_PUSH_WINDOW),
                };
                let task = push(
                    Arc::clone(&shared),
                    mailbox,
                    size as usize,
                    Arc::clone(&window),
                    out_tx.clone(),
                );
                let span = tracing::debug_span!("push", mailbox = %short(mailbox));
                pusher = Some(tokio::spawn(task.instrument(span)));
            }
        }
        throttle(limited.as_ref()).await;
    }
    if let Some(p) = pusher {
        p.abort();
        state.subscribed.store(false, Ordering::SeqCst);
    }
    drop(reply_tx);
    drop(out_tx);
    let _ = replier.await;
    let _ = writer.await;
}

/// The answer to one send: its sequence number, or why it was refused.
fn send_result(request_id: u64, result: Result<(u64, bool), WireError>) -> pb::RelayFrame {
    let (seq, duplicate, error) = match result {
        Ok((seq, duplicate)) => (seq, duplicate, None),
        Err(e) => (0, false, Some(e.into())),
    };
    pb::RelayFrame {
        frame: Some(Out::SendResult(pb::SendResult {
            request_id,
            seq,
            duplicate,
            error,
        })),
    }
}

fn send_reply<S: MailboxStore, C: Clock>(shared: &Shared<S, C>, s: &pb::Send) -> PendingReply {
    match shared.core.send(s) {
        Ok(Accepted::Stored {
            mailbox,
            seq,
            duplicate,
        }) => PendingReply {
            durable: true,
            frame: send_result(s.request_id, Ok((seq, duplicate))),
            wake: Some(mailbox),
        },
        Ok(Accepted::Ephemeral { mailbox }) => {
            shared
                .hub
                .ephemeral(&mailbox, shared.core.ephemeral_envelope(s));
            PendingReply {
                durable: false,
                frame: send_result(s.request_id, Ok((0, false))),
                wake: None,
            }
        }
        Err(e) => PendingReply {
            durable: false,
            frame: send_result(s.request_id, Err(e)),
            wake: None,
        },
    }
}

/// Push a mailbox's envelopes to its device: what is stored first (in
/// batches, within the window), then `CaughtUp`, then whatever arrives.
async fn push<S: MailboxStore, C: Clock>(
    shared: Arc<Shared<S, C>>,
    mailbox: MailboxId,
    window_size: usize,
    window: Arc<Window>,
    out: mpsc::Sender<pb::RelayFrame>,
) {
    let mut sub = shared.hub.subscribe(mailbox);
    let mut last_seq = 0u64;
    let mut caught_up = false;
    loop {
        let room = window
            .in_flight
            .lock()
            .map(|f| window_size.saturating_sub(f.len()))
            .unwrap_or(0);
        if room > 0 {
            let want = room.min(DRAIN_BATCH);
            let batch = match shared.core.store().fetch(&mailbox, last_seq, want) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!("fetch failed: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let full = batch.len() == want;
            for e in batch {
                last_seq = e.seq;
                if let Ok(mut f) = window.in_flight.lock() {
                    f.insert(e.seq);
                }
                let env = pb::Envelope {
                    seq: e.seq,
                    message_id: e.message_id.to_vec().into(),
                    received_at_ms: e.received_ms,
                    payload: e.payload.into(),
                    ephemeral: false,
                };
                if out
                    .send(pb::RelayFrame {
                        frame: Some(Out::Envelope(env)),
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if full {
                continue;
            }
            if !caught_up {
                caught_up = true;
                let frame = pb::RelayFrame {
                    frame: Some(Out::CaughtUp(pb::CaughtUp {})),
                };
                if out.send(frame).await.is_err() {
                    return;
                }
            }
        }
        tokio::select! {
            _ = sub.wake.notified() => {}
            _ = window.opened.notified() => {}
            Some(env) = sub.ephemeral.recv() => {
                if out.send(pb::RelayFrame { frame: Some(Out::Envelope(env)) }).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A mailbox id shortened for logs.
pub fn short(mailbox: MailboxId) -> String {
    hex::encode(&mailbox[..4])
}
