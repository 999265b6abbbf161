//! One QUIC connection: accepts its streams and drives them. A stream starts
//! with one byte naming its kind: [`STREAM_CONTROL`] (one request, one
//! response) or [`STREAM_MESSAGES`] (the long-lived message stream). This
//! module only moves bytes: it decodes control requests for [`RelayCore`],
//! feeds message-stream frames to the [`MessageStream`] machine, runs what
//! the machine asks for (store work off the async workers, on the
//! [`StoreWorkers`] pool, one job per batch; durability waits; hub calls), and writes
//! frames back, coalesced, from the same task ([`Outbox`]). The stream's
//! rules live in [`crate::stream`].

use crate::clock::Clock;
use crate::conn_state::ConnState;
use crate::core::{storage_unavailable, ConnAuth, RelayCore};
use crate::hub::{Hub, Subscription};
use crate::observer::Observer;
use crate::outbox::Outbox;
use crate::rate::ConnectionSlots;
use crate::store::{Durable, MailboxId, MailboxStore};
use crate::stream::{
    run_store, try_store_now, MessageStream, Output, PushBudget, PushLimits, StoreOp, StoreOutcome,
    Ticket,
};
use crate::workers::StoreWorkers;
use quinn::{RecvStream, SendStream};
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tern_protocol::frame::{decode_message, FrameError};
use tern_protocol::io::{read_frame, write_frame, FrameReader, ReadFrameError};
use tern_protocol::pb;
use tern_protocol::{ErrorCode, WireError};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, Instrument};

use tern_protocol::{STREAM_CONTROL, STREAM_MESSAGES, STREAM_PRESENCE};

/// How long a new stream may take to say what kind it is.
const STREAM_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a finished stream may take to hand its last frames to a peer
/// that is not reading them.
const WRITER_DRAIN: Duration = Duration::from_secs(10);
/// Most frames handed to the machine from what one read brought, before
/// its outputs are run.
const READ_BURST: usize = 256;

/// What every connection shares.
pub struct Shared<S, C> {
    /// The protocol core.
    pub core: RelayCore<S, C>,
    /// Subscriptions.
    pub hub: Arc<Hub>,
    /// Connections open per address.
    pub slots: ConnectionSlots,
    /// Threads that run the streams' store work.
    pub workers: StoreWorkers,
    /// Told what the relay sees per connection; none by default.
    pub observer: Observer,
    /// Bytes of pushes held over every stream ([`PushLimits`]).
    pub push_budget: Arc<PushBudget>,
    /// History blobs ([`crate::history`]).
    pub history: crate::history::HistoryService,
    /// Who is online, and who may know ([`crate::presence`]).
    pub presence: Arc<crate::presence::Presence>,
    /// Push endpoints and wake-ups ([`crate::push`]).
    pub push: crate::push::Push,
}

/// Largest an envelope frame's fields other than the payload make it: the
/// unit fetches are sized in, with the payload at its largest.
const ENVELOPE_FRAME_OVERHEAD: usize = 128;
/// How soon a stream whose fetch found the relay-wide push budget spent
/// looks again.
const BUDGET_RETRY: Duration = Duration::from_millis(50);

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
    let id = crate::observer::next_connection_id();
    if let Some(o) = shared.observer.get() {
        o.connected(id, conn.remote_address());
    }
    let state = Arc::new(ConnState::new(
        ConnAuth::observed(conn.remote_address()),
        shared.core.rates().connection(Instant::now()),
    ));
    loop {
        let next = tokio::select! {
            s = conn.accept_bi() => s,
            d = conn.read_datagram() => match d {
                Ok(d) => {
                    datagram(&shared, &state, &d);
                    continue;
                }
                Err(e) => Err(e),
            },
        };
        let (send, recv) = match next {
            Ok(s) => s,
            Err(e) => {
                debug!("connection ended: {e}");
                return;
            }
        };
        // Opening a stream counts against the connection's rate; over it,
        // the connection waits before it gets another.
        let limited = state.rate.check_at(Instant::now()).err();
        throttle(limited.as_ref()).await;
        let (shared, state, conn) = (Arc::clone(&shared), Arc::clone(&state), conn.clone());
        let span = tracing::debug_span!("stream", id = %send.id());
        tokio::spawn(
            async move { stream(shared, state, conn, id, exporter, send, recv).await }
                .instrument(span),
        );
    }
}

/// Serve one stream by its kind. Each kind's driver is boxed, so a task
/// holds only the one it runs (a presence stream, one per watcher
/// connection, does not carry a message stream's state machine).
async fn stream<S: MailboxStore, C: Clock>(
    shared: Arc<Shared<S, C>>,
    state: Arc<ConnState>,
    conn: quinn::Connection,
    id: usize,
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
        STREAM_CONTROL => Box::pin(control(shared, state, conn, id, exporter, send, recv)).await,
        STREAM_MESSAGES => Box::pin(messages(shared, state, id, send, recv)).await,
        STREAM_PRESENCE => {
            let authenticated = state.mailbox().is_some();
            let max = shared.core.limits().max_frame_bytes;
            let presence = Arc::clone(&shared.presence);
            Box::pin(crate::presence::stream::serve(
                presence,
                authenticated,
                max,
                send,
                recv,
            ))
            .await
        }
        _ => {
            let frame = pb::RelayFrame::error(WireError::new(
                ErrorCode::Unsupported,
                "unknown stream kind",
            ));
            let _ = write_frame(&mut send, &frame).await;
            let _ = send.finish();
        }
    }
}

/// One QUIC datagram from the peer: a heartbeat from an authenticated
/// owner counts (docs/protocol.md §17); anything else, or a datagram over
/// the connection's rate, is dropped without a word (datagrams are never
/// answered).
fn datagram<S: MailboxStore, C: Clock>(shared: &Shared<S, C>, state: &ConnState, body: &[u8]) {
    if body != [tern_protocol::DATAGRAM_HEARTBEAT] {
        return;
    }
    let Some(mailbox) = state.mailbox() else {
        return;
    };
    if state.rate.check_at(Instant::now()).is_ok() {
        shared.presence.heartbeat(mailbox);
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

fn control_error(e: WireError) -> pb::ControlResponse {
    pb::ControlResponse {
        response: Some(pb::control_response::Response::Error(e.into())),
    }
}

async fn control<S: MailboxStore, C: Clock>(
    shared: Arc<Shared<S, C>>,
    state: Arc<ConnState>,
    conn: quinn::Connection,
    id: usize,
    exporter: [u8; 32],
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let max = shared.core.limits().max_frame_bytes;
    // The request must arrive whole within the header timeout, so a stream
    // that announces a frame and trickles it cannot pin a buffer forever.
    let Ok(read) = tokio::time::timeout(STREAM_HEADER_TIMEOUT, read_frame(&mut recv, max)).await
    else {
        let _ = send.reset(1u32.into());
        return;
    };
    if let Err(e) = state.rate.check_at(Instant::now()) {
        let _ = write_frame(&mut send, &control_error(e)).await;
        let _ = send.finish();
        return;
    }
    let response = match read {
        Ok(Some(body)) => match decode_message::<pb::ControlRequest>(&body) {
            Ok(req) if crate::presence::control::is_presence(&req) => {
                // Presence and push live in memory: answered here.
                crate::presence::control::answer(&shared, state.mailbox(), req)
            }
            Ok(req) if tern_protocol::history::is_history(&req) => {
                // History requests go to their own store, off the async
                // workers; they are durable when answered.
                let core = Arc::clone(&shared);
                let answer = shared
                    .workers
                    .run(move || {
                        let auth = state.auth.lock().ok()?;
                        core.history.control(&auth, &exporter, &req)
                    })
                    .await;
                let Ok(Some(answer)) = answer else { return };
                answer
            }
            Ok(req) => {
                // Registration and tokens write to the store: off the
                // async workers.
                let core = Arc::clone(&shared);
                let answer = shared
                    .workers
                    .run(move || {
                        let mut auth = state.auth.lock().ok()?;
                        Some(core.core.control(&mut auth, &exporter, req))
                    })
                    .await;
                let Ok(Some(answer)) = answer else { return };
                if !answer.needs_durability {
                    answer.response
                } else if let Err(e) = shared.core.durable().await {
                    tracing::warn!("control write not durable: {e}");
                    control_error(storage_unavailable())
                } else {
                    answer.response
                }
            }
            Err(e) => control_error(WireError::new(ErrorCode::Malformed, e.to_string())),
        },
        Ok(None) => return,
        Err(ReadFrameError::Frame(FrameError::TooLarge { size, max })) => {
            control_error(WireError::new(
                ErrorCode::FrameTooLarge,
                format!("frame of {size} bytes exceeds the maximum of {max}"),
            ))
        }
        Err(ReadFrameError::Frame(FrameError::Malformed(m))) => {
            control_error(WireError::new(ErrorCode::Malformed, m))
        }
        Err(_) => return,
    };
    if let Some(pb::control_response::Response::Authenticated(_)) = &response.response {
        // A device's own connection: it may now have as many streams open
        // as the relay allows (unauthenticated ones get a few).
        conn.set_max_concurrent_bi_streams(shared.core.limits().max_concurrent_streams.into());
    }
    if let (Some(o), Some(pb::control_response::Response::Authenticated(a))) =
        (shared.observer.get(), &response.response)
    {
        if let Ok(mailbox) = MailboxId::try_from(&a.mailbox_id[..]) {
            o.authenticated(id, mailbox);
        }
    }
    let _ = write_frame(&mut send, &response).await;
    let _ = send.finish();
}

/// The result of a future that is ready now, without waiting: used to take
/// every frame one read brought before running the machine's outputs.
fn now_or_never<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// Await store work handed to the pool if there is some; pending forever
/// otherwise. `None` if the job panicked or the pool stopped.
async fn join<T>(task: &mut Option<oneshot::Receiver<T>>) -> Option<T> {
    match task {
        Some(t) => t.await.ok(),
        None => std::future::pending().await,
    }
}

/// The result of the durability wait under way; pending if there is none.
async fn wait_durable(
    durable: &mut Option<(Ticket, Durable)>,
) -> Result<(), crate::store::StoreError> {
    match durable {
        Some((_, d)) => d.await,
        None => std::future::pending().await,
    }
}

/// Until `at`; pending if there is no timer. An async fn, so no timer is
/// built on the loop's turns that do not poll it.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// A wake-up of the subscribed mailbox; pending if there is no subscription.
async fn notified(wake: Option<&Arc<tokio::sync::Notify>>) {
    match wake {
        Some(w) => w.notified().await,
        None => std::future::pending().await,
    }
}

/// Resolves when a newer subscription replaced this one; pending if there
/// is no subscription or it was never replaced.
async fn replaced_by_newer(rx: Option<&mut oneshot::Receiver<()>>) {
    match rx {
        Some(rx) => {
            if rx.await.is_err() {
                // The hub let go without replacing it (it is shutting
                // down): nothing to do.
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// An ephemeral envelope for the subscribed mailbox; pending if there is no
/// subscription.
async fn recv_ephemeral(rx: Option<&mut mpsc::Receiver<pb::Envelope>>) -> Option<pb::Envelope> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// What one message stream's driver has under way.
#[derive(Default)]
struct Work {
    store: Option<oneshot::Receiver<Vec<StoreOutcome>>>,
    durable: Option<(Ticket, Durable)>,
    fetch: Option<oneshot::Receiver<Result<Vec<pb::Envelope>, WireError>>>,
    sub: Option<Subscription>,
    /// Envelopes taken from the subscription's hand-overs (kept, empty,
    /// between wake-ups so its room is reused).
    handed: Vec<pb::Envelope>,
    closing: bool,
}

/// Drive one message stream: the machine decides, this runs.
async fn messages<S: MailboxStore, C: Clock>(
    shared: Arc<Shared<S, C>>,
    state: Arc<ConnState>,
    id: usize,
    send: SendStream,
    recv: RecvStream,
) {
    let mut outbox = Outbox::new(send);
    let limits = shared.core.limits();
    let mut machine =
        MessageStream::new(Arc::clone(&state), limits.push_window).with_limits(PushLimits {
            stream_bytes: limits.stream_push_bytes,
            envelope_frame_bytes: limits.max_envelope_bytes + ENVELOPE_FRAME_OVERHEAD,
            relay: Arc::clone(&shared.push_budget),
        });
    let mut frames = FrameReader::new(recv, shared.core.limits().max_frame_bytes);
    let mut work = Work::default();
    let mut peer_gone = false;
    'drive: loop {
        while let Some(output) = machine.poll() {
            run_output(&shared, &state, id, &mut work, output);
        }
        // Write what may leave, as far as QUIC takes it now; room freed
        // in the push bounds may let the machine fetch again.
        match outbox.flush(&mut machine) {
            Ok(true) => continue,
            Ok(false) => {}
            // The peer stopped reading: nothing more can be said.
            Err(_) => {
                peer_gone = true;
                break;
            }
        }
        if work.closing && !machine.has_transmit() {
            break;
        }
        let sub_present = work.sub.is_some();
        let mut timeout = machine.poll_timeout();
        if machine.starved() {
            let retry = Instant::now() + BUDGET_RETRY;
            timeout = Some(timeout.map_or(retry, |t| t.min(retry)));
        }
        let Work {
            store,
            durable,
            fetch,
            sub,
            ..
        } = &mut work;
        let (wake, ephemeral, replaced) = match sub {
            Some(s) => (Some(&s.wake), Some(&mut s.ephemeral), Some(&mut s.replaced)),
            None => (None, None, None),
        };
        tokio::select! {
            read = frames.next(), if machine.wants_frames() => {
                let now = Instant::now();
                let mut read = Some(read);
                let mut burst = 0;
                // Take every frame this read brought, so store work
                // leaves in batches, not a frame at a time.
                while let Some(r) = read.take() {
                    match r {
                        Ok(Some(body)) => machine.handle_frame(now, body),
                        Ok(None) => machine.handle_eof(),
                        Err(e) => machine.handle_read_error(&e),
                    }
                    burst += 1;
                    if burst < READ_BURST && machine.wants_frames() {
                        read = now_or_never(frames.next());
                    }
                }
            }
            outcomes = join(store), if store.is_some() => {
                *store = None;
                // A batch that panicked is answered as a storage failure.
                machine.handle_stored(outcomes.unwrap_or_default());
            }
            result = wait_durable(durable), if durable.is_some() => {
                if let Some((ticket, _)) = durable.take() {
                    machine.handle_durable(ticket, result);
                }
            }
            fetched = join(fetch), if fetch.is_some() => {
                *fetch = None;
                let fetched = fetched.unwrap_or_else(|| Err(storage_unavailable()));
                machine.handle_fetched(Instant::now(), fetched);
            }
            _ = notified(wake), if wake.is_some() => {
                // Envelopes handed over with the wake-ups, then a plain
                // wake-up if one came without (or one did not fit).
                let plain = work
                    .sub
                    .as_ref()
                    .is_none_or(|s| s.handed.take_into(&mut work.handed));
                for env in work.handed.drain(..) {
                    machine.handle_handed(env);
                }
                if plain {
                    machine.handle_wake();
                }
            }
            _ = replaced_by_newer(replaced), if sub_present => {
                work.sub = None;
                machine.handle_replaced();
            }
            w = outbox.writable(), if outbox.blocked() => match w {
                Ok(()) => outbox.written(&mut machine),
                Err(_) => {
                    peer_gone = true;
                    break 'drive;
                }
            },
            Some(env) = recv_ephemeral(ephemeral), if machine.wants_ephemeral() => {
                machine.handle_ephemeral(env);
            }
            _ = sleep_until(timeout), if timeout.is_some() => {
                machine.handle_timeout(Instant::now());
            }
            // Nothing under way and nothing to wait for: the machine has
            // no way forward, so end rather than hang.
            else => break,
        }
    }
    wake_owed(&shared, &mut machine, &mut work).await;
    // A peer that stopped reading (a replaced subscription's, say) would
    // keep what is left unwritten forever: it gets a while, then the
    // stream is given up.
    if !peer_gone {
        outbox.finish(WRITER_DRAIN).await;
    }
}

/// The stream ended, perhaps mid-way (its peer stopped reading): sends it
/// already handed to the store are in the store whatever became of their
/// answers, so their recipients are woken as they would have been had the
/// sender stayed.
async fn wake_owed<S: MailboxStore, C: Clock>(
    shared: &Arc<Shared<S, C>>,
    machine: &mut MessageStream,
    work: &mut Work,
) {
    if work.store.is_some() {
        let outcomes = join(&mut work.store).await;
        work.store = None;
        machine.handle_stored(outcomes.unwrap_or_default());
    }
    for owed in machine.abandon() {
        match owed {
            Output::Notify(mailbox) => shared.hub.stored(&mailbox),
            Output::Hand { targets, envelope } => shared.hub.stored_with(&targets, &envelope),
            Output::Ephemeral { mailbox, envelope } => {
                shared.hub.ephemeral(&mailbox, envelope);
            }
            _ => {}
        }
    }
}

/// Carry out one of the machine's outputs.
fn run_output<S: MailboxStore, C: Clock>(
    shared: &Arc<Shared<S, C>>,
    state: &Arc<ConnState>,
    id: usize,
    work: &mut Work,
    output: Output,
) {
    match output {
        Output::Subscribe(mailbox) => {
            debug!(mailbox = %short(mailbox), "subscribed");
            work.sub = Some(shared.hub.subscribe(mailbox));
        }
        Output::Unsubscribe => {
            work.sub = None;
            work.fetch = None;
        }
        Output::Store(ops) => {
            if let Some(o) = shared.observer.get() {
                let targets = ops.iter().flat_map(|op| match op {
                    StoreOp::Send(send) => vec![&send.mailbox_id],
                    StoreOp::SendMany(many) => many.targets.iter().map(|t| &t.mailbox_id).collect(),
                    _ => Vec::new(),
                });
                for mailbox in targets {
                    if let Ok(mailbox) = MailboxId::try_from(&mailbox[..]) {
                        o.sent(id, mailbox);
                    }
                }
            }
            // An ack the store can apply at once is, here: a store
            // thread's wake-up and the answer's hop back cost more than it.
            if let Some(outcomes) = try_store_now(&shared.core, state, &ops) {
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(outcomes);
                work.store = Some(rx);
                return;
            }
            let (core, state) = (Arc::clone(shared), Arc::clone(state));
            work.store = Some(
                shared
                    .workers
                    .run(move || run_store(&core.core, &state, ops)),
            );
        }
        // Begun here, after the writes of every result it covers.
        Output::AwaitDurable(ticket) => work.durable = Some((ticket, shared.core.durable())),
        Output::Notify(mailbox) => shared.hub.stored(&mailbox),
        Output::Hand { targets, envelope } => shared.hub.stored_with(&targets, &envelope),
        Output::Ephemeral { mailbox, envelope } => {
            shared.hub.ephemeral(&mailbox, envelope);
        }
        Output::Fetch(f) => {
            let shared = Arc::clone(shared);
            let fetch = Arc::clone(&shared);
            work.fetch = Some(
                shared
                    .workers
                    .run(move || fetch.core.fetch(&f.mailbox, f.after_seq, f.limit)),
            );
        }
        Output::Close => work.closing = true,
    }
}

/// A mailbox id shortened for logs.
pub fn short(mailbox: MailboxId) -> String {
    hex::encode(&mailbox[..4])
}
