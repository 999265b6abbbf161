//! The running client's task: one loop that owns the [`Client`] and waits on
//! whichever comes first — a command from a handle, a frame from the home
//! relay, a batch of acks going stale, the reconnect timer, a connection
//! attempt finishing, an outbox deposit finishing, or the pause a relay
//! asked for between deposit rounds.
//!
//! Network waits that need no store run in tasks of their own: connecting
//! to the home relay (with a signing copy of the account) and depositing
//! the outbox (see [`super::flush`]). So an unreachable relay never holds
//! up receiving or the handles' commands; the store is touched only here.

use super::direct::DirectIntake;
use super::flush::{Cycle, Round, Waiter};
use crate::backoff::Backoff;
use crate::client::{authenticated_link, Client};
use crate::direct::{Inbound, PathInfo, Paths};
use crate::error::ClientError;
use crate::event::{Event, OutboxReport, SendOutcome};
use crate::groups::Queued;
use crate::inbox::{reconnect_backoff, retry_after, subscribed, Intake, SETTLE_IDLE};
use crate::receipts::MessageReport;
use crate::settings::Settings;
use crate::store::{Contact, Profile, StoredMessage};
use crate::transport::{MessageStream, RelayLink};
use crate::typing::{send_typing, TypingOutcome};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tern_crypto::DeviceAccount;
use tern_protocol::pb::{self, relay_frame::Frame};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;
use tracing::warn;

/// When, after the home connection comes up, the running client tops up
/// its token pool (drawn at random).
const TOP_UP_AFTER: std::ops::Range<Duration> = Duration::from_secs(2)..Duration::from_secs(60);

/// How long shutdown waits for a deposit in flight to come back.
const SHUTDOWN_DEPOSIT_WAIT: Duration = Duration::from_secs(10);

/// Where a command's answer goes.
pub(super) type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

/// What a handle asks of the running client.
pub(super) enum Command {
    SendText {
        contact: String,
        text: String,
        reply: Reply<(String, SendOutcome)>,
    },
    Invite(Reply<String>),
    Accept {
        code: String,
        name: String,
        reply: Reply<Contact>,
    },
    Contacts(Reply<Vec<Contact>>),
    History {
        contact: String,
        limit: usize,
        reply: Reply<Vec<StoredMessage>>,
    },
    Block {
        contact: String,
        reply: Reply<()>,
    },
    FlushOutbox(Reply<OutboxReport>),
    Profile(Reply<Profile>),
    Status {
        id: String,
        reply: Reply<MessageReport>,
    },
    Typing {
        contact: String,
        reply: Reply<TypingOutcome>,
    },
    Settings {
        read_receipts: Option<bool>,
        reply: Reply<Settings>,
    },
    Group {
        call: crate::groups::GroupCall,
        reply: Reply<serde_json::Value>,
    },
    Trust {
        req: crate::trust::TrustRequest,
        reply: Reply<crate::trust::TrustResult>,
    },
    PresenceOp {
        req: crate::presence::request::PresenceRequest,
        reply: Reply<crate::presence::request::PresenceResult>,
    },
    HistoryOp {
        req: crate::history::request::HistoryRequest,
        reply: Reply<crate::history::request::HistoryResult>,
    },
    SetDirect {
        mode: crate::settings::DirectMode,
        reply: Reply<Settings>,
    },
    PathInfo {
        contact: String,
        reply: Reply<PathInfo>,
    },
    Shutdown(oneshot::Sender<()>),
}

/// The subscription to the home relay.
struct Home {
    link: RelayLink,
    stream: MessageStream,
    intake: Intake,
}

/// What woke the task.
enum Wake {
    Command(Option<Command>),
    Frame(Result<Option<Frame>, ClientError>),
    Settle,
    Reconnect,
    Connected(Result<Result<Subscription, ClientError>, JoinError>),
    Deposited(Result<Round, JoinError>),
    Resume,
    Receipts,
    TopUp,
    History,
    Direct(Option<Inbound>),
    DirectSettle,
    Seen(Option<crate::presence::watch::Seen>),
    OwnerNews(Option<crate::presence::owner::OwnerNews>),
}

/// How long queued history entries wait for more before they go up, so a
/// burst of messages makes a few blobs rather than one each.
const HISTORY_DEBOUNCE: std::time::Duration = std::time::Duration::from_secs(1);

/// A home link with its message stream subscribed.
type Subscription = (RelayLink, MessageStream);

/// The running client.
pub(super) struct Task {
    pub(super) client: Client,
    pub(super) events: broadcast::Sender<Event>,
    home: Option<Home>,
    /// A connection attempt in flight.
    connecting: Option<JoinHandle<Result<Subscription, ClientError>>>,
    /// A copy of the account for signing the home relay's challenge in the
    /// connecting task (signing keys never change).
    signer: Option<Arc<DeviceAccount>>,
    backoff: Backoff,
    next_attempt: Instant,
    pub(super) cycle: Option<Cycle>,
    /// Waiters for the cycle after this one, if another was asked for.
    pub(super) next_cycle: Option<Vec<Waiter>>,
    /// Ids already reported queued, so a retry does not report them again.
    pub(super) reported_queued: HashSet<String>,
    /// When to flush receipts queued after a fetch: a random delay
    /// (the send spacing's range) after the first of them, so receipts do
    /// not answer each push at once (docs/threat-model.md).
    receipts_due: Option<Instant>,
    /// When to mint tokens ahead of need ([`crate::tokens`]): a random
    /// point after the home connection came up, unrelated to any send.
    top_up_at: Option<Instant>,
    /// When to upload queued history entries ([`crate::history`]).
    history_due: Option<Instant>,
    /// Direct paths to contacts (`crate::direct`), if the account could
    /// be copied for signing.
    pub(super) paths: Option<Paths>,
    pub(super) direct_rx: Option<mpsc::Receiver<Inbound>>,
    pub(super) direct: DirectIntake,
    /// Presence: heartbeats, watchers, states (`super::presence`).
    pub(super) presence: super::presence::PresenceRuntime,
}

async fn next_inbound(rx: &mut Option<mpsc::Receiver<Inbound>>) -> Option<Inbound> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_frame(home: &mut Option<Home>) -> Result<Option<Frame>, ClientError> {
    match home {
        Some(h) => h.stream.next().await,
        None => std::future::pending().await,
    }
}

async fn landed(cycle: &mut Option<Cycle>) -> Result<Round, JoinError> {
    match cycle.as_mut().and_then(Cycle::flight) {
        Some(flight) => flight.await,
        None => std::future::pending().await,
    }
}

async fn joined<T>(task: &mut Option<JoinHandle<T>>) -> Result<T, JoinError> {
    match task {
        Some(t) => t.await,
        None => std::future::pending().await,
    }
}

impl Task {
    pub(super) fn new(client: Client, events: broadcast::Sender<Event>) -> Self {
        let pickle = client.account.to_encrypted_pickle(&client.key);
        let signer = match DeviceAccount::from_encrypted_pickle(&pickle, &client.key) {
            Ok(a) => Some(Arc::new(a)),
            Err(e) => {
                warn!("cannot copy the account for signing in: {e}");
                None
            }
        };
        let (paths, direct_rx) = match &signer {
            Some(s) => {
                let (p, rx) = Paths::new(Arc::clone(s));
                (Some(p), Some(rx))
            }
            None => (None, None),
        };
        Self {
            client,
            events,
            home: None,
            connecting: None,
            signer,
            backoff: reconnect_backoff(),
            next_attempt: Instant::now(),
            cycle: None,
            next_cycle: None,
            reported_queued: HashSet::new(),
            receipts_due: None,
            top_up_at: None,
            history_due: None,
            paths,
            direct_rx,
            direct: DirectIntake::default(),
            presence: Default::default(),
        }
    }

    pub(super) fn emit(&self, e: Event) {
        // No receivers is fine: nobody is listening right now.
        let _ = self.events.send(e);
    }

    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        self.presence_rewatch();
        let done = loop {
            // Direct arrivals are acked only once durable: due ones are
            // settled however busy the client is with commands.
            if self
                .direct
                .settle_at()
                .is_some_and(|at| at <= Instant::now())
            {
                self.settle_direct().await;
            }
            let connected = self.home.is_some();
            let connecting = self.connecting.is_some();
            if !connected && !connecting && Instant::now() >= self.next_attempt {
                self.connect();
            }
            let connecting = self.connecting.is_some();
            let settle = self.home.as_ref().is_some_and(|h| h.intake.has_pending());
            let retry_at = self.next_attempt;
            let flying = self.cycle.as_ref().is_some_and(Cycle::is_flying);
            let resume_at = self.cycle.as_ref().and_then(Cycle::resume_at);
            let receipts_due = self.receipts_due;
            let top_up_at = self.top_up_at.filter(|_| connected);
            let history_due = self.history_due.filter(|_| connected);
            let direct_settle = self.direct.settle_at();
            let direct_on = self.direct_rx.is_some();
            let wake = tokio::select! {
                biased;
                // Arrivals on direct paths wait for their acks: before
                // commands, so a flood of sends cannot starve them.
                i = next_inbound(&mut self.direct_rx), if direct_on => Wake::Direct(i),
                c = commands.recv() => Wake::Command(c),
                f = next_frame(&mut self.home), if connected => Wake::Frame(f),
                c = joined(&mut self.connecting), if connecting => Wake::Connected(c),
                d = landed(&mut self.cycle), if flying => Wake::Deposited(d),
                _ = tokio::time::sleep(SETTLE_IDLE), if settle => Wake::Settle,
                _ = tokio::time::sleep_until(retry_at), if !connected && !connecting => Wake::Reconnect,
                _ = sleep_until_some(resume_at), if resume_at.is_some() => Wake::Resume,
                _ = sleep_until_some(receipts_due), if receipts_due.is_some() => Wake::Receipts,
                _ = sleep_until_some(top_up_at), if top_up_at.is_some() => Wake::TopUp,
                _ = sleep_until_some(history_due), if history_due.is_some() => Wake::History,
                _ = sleep_until_some(direct_settle), if direct_settle.is_some() => Wake::DirectSettle,
                s = self.presence.seen_rx.recv() => Wake::Seen(s),
                n = self.presence.owner_rx.recv() => Wake::OwnerNews(n),
            };
            match wake {
                Wake::Command(Some(Command::Shutdown(done))) => break Some(done),
                Wake::Command(Some(c)) => self.serve(c).await,
                Wake::Command(None) => break None,
                Wake::Frame(f) => self.on_frame(f).await,
                Wake::Settle => {
                    if let Err(e) = self.settle().await {
                        self.lose(e).await;
                    }
                }
                Wake::Reconnect => {}
                Wake::Connected(c) => {
                    self.on_connected(c);
                    if let Some(link) = self.home_link_clone() {
                        self.presence_connected(link).await;
                    }
                    // History queued while offline goes up soon.
                    self.history_soon();
                }
                Wake::Deposited(d) => self.on_deposited(d).await,
                Wake::Resume => self.launch_round(),
                Wake::Receipts => {
                    self.receipts_due = None;
                    self.request_flush(Vec::new());
                }
                Wake::TopUp => self.top_up().await,
                Wake::History => {
                    self.history_due = None;
                    self.upload_history().await;
                }
                Wake::Direct(Some(i)) => self.on_direct(i).await,
                Wake::Direct(None) => self.direct_rx = None,
                Wake::DirectSettle => self.settle_direct().await,
                Wake::Seen(Some(s)) => self.on_seen(s),
                Wake::OwnerNews(Some(n)) => self.on_owner_news(n),
                // The runtime holds a sender of each: never closed.
                Wake::Seen(None) | Wake::OwnerNews(None) => {}
            }
        };
        self.stop().await;
        if let Some(done) = done {
            let _ = done.send(());
        }
    }

    /// Start connecting to the home relay and subscribing, in a task of
    /// its own.
    fn connect(&mut self) {
        let mut dialer = self.client.dialer.clone();
        let relay = self.client.profile.relay_url.clone();
        let mailbox = self.client.profile.mailbox_id;
        let signer = self.signer.clone();
        let paths = self.paths.clone();
        self.connecting = Some(tokio::spawn(async move {
            let signer = signer.ok_or_else(|| {
                ClientError::Store("no copy of the account to sign in with".into())
            })?;
            let link =
                authenticated_link(&mut dialer, &relay, &mailbox, |m| signer.sign(m)).await?;
            if let Some(paths) = paths {
                crate::direct::on_home_link(&paths, &dialer, &link).await;
            }
            subscribed(link).await
        }));
    }

    /// Subscribed: receive from now on, and deliver what waits in the
    /// outbox. Failed: try again after a backoff.
    fn on_connected(&mut self, result: Result<Result<Subscription, ClientError>, JoinError>) {
        self.connecting = None;
        match result {
            Ok(Ok((link, stream))) => {
                self.home = Some(Home {
                    link,
                    stream,
                    intake: Intake::default(),
                });
                self.emit(Event::Connection { connected: true });
                self.request_flush(Vec::new());
                let delay = rand::Rng::gen_range(&mut rand::thread_rng(), TOP_UP_AFTER);
                self.top_up_at = Some(Instant::now() + delay);
            }
            Ok(Err(e)) => self.retry_later(&e),
            Err(e) => self.retry_later(&ClientError::Protocol(format!("connecting failed: {e}"))),
        }
    }

    /// Mint tokens ahead of need and revoke stale invite tokens, on the
    /// home connection (already authenticated: no new connection).
    async fn top_up(&mut self) {
        self.top_up_at = None;
        let Some(home) = &self.home else { return };
        match self.client.top_up_tokens(&home.link).await {
            Ok(0) => {}
            // Sends keep their distance from this mint, as from an auth.
            Ok(_) => self.client.dialer.spacing().note_auth(),
            Err(e) => warn!("token pool not topped up: {e}"),
        }
        if let Err(e) = self.client.revoke_stale_tokens(&home.link).await {
            warn!("stale invite tokens not revoked yet: {e}");
        }
    }

    fn retry_later(&mut self, e: &ClientError) {
        let delay = self.backoff.next_delay(retry_after(e));
        warn!("home relay unreachable ({e}); retrying in {delay:?}");
        self.next_attempt = Instant::now() + delay;
    }

    /// The home connection broke: show what was stored (its acks are lost
    /// with the connection; the relay pushes those envelopes again and they
    /// are dropped as already stored), and try again after a backoff.
    async fn lose(&mut self, e: ClientError) {
        if let Some(home) = self.home.take() {
            let events = self.events.clone();
            home.intake
                .abandon(&self.client, &mut |ev| {
                    let _ = events.send(ev);
                })
                .await;
            home.link.close();
            self.emit(Event::Connection { connected: false });
        }
        self.presence_lost();
        self.retry_later(&e);
    }

    async fn on_frame(&mut self, frame: Result<Option<Frame>, ClientError>) {
        let result = match frame {
            Ok(Some(Frame::Envelope(env))) => self.take(env).await,
            Ok(Some(Frame::CaughtUp(_))) => {
                // The subscription works end to end: start backoff over.
                self.backoff.reset();
                self.settle().await
            }
            Ok(Some(Frame::Error(e))) => Err(ClientError::Refused(e.into())),
            Ok(Some(Frame::SendResult(_) | Frame::SendManyResult(_))) => Ok(()),
            Ok(None) => Err(self.client.home_closed()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            self.lose(e).await;
        }
    }

    async fn take(&mut self, env: pb::Envelope) -> Result<(), ClientError> {
        let Some(home) = self.home.as_mut() else {
            return Ok(());
        };
        home.intake.take(&mut self.client, env)?;
        if home.intake.is_full() {
            self.settle().await?;
        }
        Ok(())
    }

    async fn settle(&mut self) -> Result<(), ClientError> {
        let Some(home) = self.home.as_mut() else {
            return Ok(());
        };
        let events = self.events.clone();
        home.intake
            .settle(&self.client, &mut home.stream, &mut |e| {
                let _ = events.send(e);
            })
            .await?;
        if home.intake.take_receipts_queued() && self.receipts_due.is_none() {
            let delay = self.client.dialer.spacing().draw();
            self.receipts_due = Some(Instant::now() + delay);
        }
        // Groups: a group we were added to wants our card (a token minted
        // on this connection), and receiving may have queued updates for
        // other members.
        if self.client.wants_group_cards()? {
            self.client.publish_group_cards_on(&home.link).await?;
        }
        self.client.forward_group_news()?;
        if std::mem::take(&mut self.client.group_news) {
            self.request_flush(Vec::new());
        }
        self.history_soon();
        self.act_on_direct_news();
        // A new grant: watch it too; a new contact: grant it.
        self.presence_rewatch();
        self.presence_refresh(false).await;
        Ok(())
    }

    /// A clone of the home link, if connected.
    pub(super) fn home_link_clone(&self) -> Option<RelayLink> {
        self.home.as_ref().map(|h| h.link.clone())
    }

    /// Flush queued receipts after a random delay (the send spacing's
    /// range), so receipts do not answer each arrival at once.
    pub(super) fn receipts_soon(&mut self) {
        if self.receipts_due.is_none() {
            let delay = self.client.dialer.spacing().draw();
            self.receipts_due = Some(Instant::now() + delay);
        }
    }

    async fn serve(&mut self, command: Command) {
        match command {
            Command::SendText {
                contact,
                text,
                reply,
            } => match self.client.queue_text(&contact, &text).await {
                Ok(id) => self.request_flush(vec![Waiter::Send { id, reply }]),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Invite(reply) => {
                let _ = reply.send(self.client.invite().await);
            }
            Command::Accept { code, name, reply } => {
                let r = self.client.accept_queued(&code, &name).await;
                if r.is_ok() {
                    self.request_flush(Vec::new());
                }
                let _ = reply.send(r);
                self.presence_refresh(true).await;
            }
            Command::Contacts(reply) => {
                let _ = reply.send(self.client.contacts());
            }
            Command::History {
                contact,
                limit,
                reply,
            } => {
                // Shown to the user: read receipts go out now.
                let r = self.client.read_history(&contact, limit);
                if matches!(r, Ok((_, true))) {
                    self.request_flush(Vec::new());
                }
                let _ = reply.send(r.map(|(m, _)| m));
            }
            Command::Block { contact, reply } => {
                let _ = reply.send(self.client.block(&contact).await);
                self.presence_refresh(true).await;
            }
            Command::FlushOutbox(reply) => self.request_flush(vec![Waiter::Report(reply)]),
            Command::Profile(reply) => {
                let _ = reply.send(Ok(self.client.profile().clone()));
            }
            Command::Status { id, reply } => {
                let _ = reply.send(self.client.message_status(&id));
            }
            Command::Typing { contact, reply } => {
                match self.client.prepare_typing(&contact).await {
                    // The network part runs on its own: receiving goes on.
                    Ok(Ok(prepared)) => {
                        let mut dialer = self.client.dialer.clone();
                        let path = self.paths.as_ref().and_then(|p| {
                            let c = self.client.contact_named(&contact).ok()?;
                            p.get(&c.identity_key)
                        });
                        tokio::spawn(async move {
                            // Over a direct path if one is up; else (or if
                            // it is not acked) through the relay.
                            if let Some(path) = path {
                                if crate::direct::send_typing(&path, &prepared).await {
                                    let _ = reply.send(Ok(TypingOutcome::Sent));
                                    return;
                                }
                            }
                            let r = send_typing(&mut dialer, prepared).await;
                            let _ = reply.send(r.map(|()| TypingOutcome::Sent));
                        });
                    }
                    Ok(Err(wait)) => {
                        let _ = reply.send(Ok(TypingOutcome::TooSoon(wait)));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::Settings {
                read_receipts,
                reply,
            } => {
                let r = match read_receipts {
                    Some(on) => self.client.set_read_receipts(on).await,
                    None => self.client.settings(),
                };
                let _ = reply.send(r);
            }
            Command::Group { call, reply } => {
                // The network part goes with the flush cycles (deposits run
                // beside receiving, and over direct paths where open); only
                // creating a group asks the home relay for a token first.
                match self.client.group_queue(call).await {
                    Ok(Queued::Done(v)) => {
                        let _ = reply.send(Ok(v));
                        // `history --group` may have queued read receipts.
                        if self.client.outbox_len().unwrap_or(0) > 0 {
                            self.request_flush(Vec::new());
                        }
                    }
                    Ok(Queued::Flush { id }) => {
                        self.client.group_news = false;
                        self.request_flush(vec![Waiter::Group { id, reply }]);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::Trust { req, reply } => {
                let rotate = req.queues();
                let r = self.client.trust(req).await;
                if rotate && r.is_ok() {
                    self.request_flush(Vec::new());
                }
                let _ = reply.send(r);
            }
            Command::PresenceOp { req, reply } => {
                let r = self.presence_command(req).await;
                let _ = reply.send(r);
            }
            Command::HistoryOp { req, reply } => {
                let r = self.client.history_op(req, &mut |_| {}).await;
                let _ = reply.send(r);
            }
            Command::SetDirect { mode, reply } => {
                let _ = reply.send(self.client.set_direct(mode).await);
            }
            Command::PathInfo { contact, reply } => {
                let r = self
                    .client
                    .contact_named(&contact)
                    .map(|c| match &self.paths {
                        Some(p) => p.info(&c.identity_key),
                        None => PathInfo {
                            direct: false,
                            rtt_ms: None,
                        },
                    });
                let _ = reply.send(r);
            }
            Command::Shutdown(_) => {}
        }
        self.history_soon();
    }

    /// Schedule an upload of queued history entries, if any are queued and
    /// none is scheduled.
    fn history_soon(&mut self) {
        if self.history_due.is_none() && self.client.history_queued().unwrap_or(false) {
            self.history_due = Some(Instant::now() + HISTORY_DEBOUNCE);
        }
    }

    /// Upload queued history entries (if history is on) on the home
    /// connection; a failure leaves them queued for the next turn.
    async fn upload_history(&mut self) {
        let Some(home) = self.home.as_ref() else {
            return;
        };
        if !self.client.history_queued().unwrap_or(false) {
            return;
        }
        if let Err(e) = self.client.upload_history_on(&home.link).await {
            tracing::warn!("history upload deferred: {e}");
            // Tried again later (or on the next connection).
            self.history_due = Some(Instant::now() + HISTORY_DEBOUNCE * 30);
        }
    }

    /// Record a deposit in flight, settle what was received, close the home
    /// connection, flush the store, and close the endpoints.
    async fn stop(mut self) {
        if let Some(c) = self.connecting.take() {
            c.abort();
        }
        let flight = self.cycle.as_mut().and_then(Cycle::take_flight);
        if let Some(flight) = flight {
            if let Ok(d) = tokio::time::timeout(SHUTDOWN_DEPOSIT_WAIT, flight).await {
                self.on_deposited(d).await;
            }
        }
        // Waiters of a cycle that would pause now are answered with what
        // happened so far.
        if self.cycle.is_some() {
            let flushed = self.client.store.flush().await.map_err(|e| e.to_string());
            self.end_cycle(flushed);
            if let Some(f) = self.cycle.take().as_mut().and_then(Cycle::take_flight) {
                f.abort();
            }
        }
        if self.direct.has_pending() {
            self.settle_direct().await;
        }
        if let Some(p) = &self.paths {
            p.close_all();
        }
        if self.home.is_some() {
            if let Err(e) = self.settle().await {
                warn!("settling on shutdown: {e}");
            }
            // What is queued goes up before the connection closes (a
            // one-shot command or the next start uploads what fails).
            self.upload_history().await;
        }
        if let Some(mut home) = self.home.take() {
            home.stream.finish(Duration::from_secs(2)).await;
            home.link.close();
            self.emit(Event::Connection { connected: false });
        }
        if let Err(e) = self.client.store.flush().await {
            warn!("flushing the store on shutdown: {e}");
        }
        self.client.close().await;
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
