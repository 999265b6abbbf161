//! The running client's task: one loop that owns the [`Client`] and waits on
//! whichever comes first — a command from a handle, a frame from the home
//! relay, a batch of acks going stale, the reconnect timer, an outbox
//! deposit finishing, or the pause a relay asked for between deposit rounds.
//!
//! Deposits run in a task of their own (they need only a clone of the
//! dialer, see [`crate::outbox`]), so a slow or unreachable contact relay
//! never holds up receiving; the store is touched only here, before and
//! after. One flush cycle runs at a time; sends that arrive during one are
//! queued on disk at once and go out in the next cycle.

use crate::backoff::Backoff;
use crate::client::Client;
use crate::error::ClientError;
use crate::event::{DeliveryStatus, Event, OutboxReport, SendOutcome};
use crate::inbox::{reconnect_backoff, retry_after, Intake, SETTLE_IDLE};
use crate::outbox::{deposit_all, round_backoff, rules, Deposit, Flushed};
use crate::store::{Contact, Profile, StoredMessage};
use crate::transport::{MessageStream, RelayLink};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tern_protocol::pb::{self, relay_frame::Frame};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;
use tracing::warn;

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
    Shutdown(oneshot::Sender<()>),
}

/// Someone waiting for the end of a flush cycle.
enum Waiter {
    Send {
        id: String,
        reply: Reply<(String, SendOutcome)>,
    },
    Report(Reply<OutboxReport>),
}

impl Waiter {
    fn answer(self, result: Result<&OutboxReport, String>) {
        match (self, result) {
            (Waiter::Send { id, reply }, Ok(report)) => {
                let r = rules::outcome(report, &id)
                    .map(|o| (id, o))
                    .map_err(ClientError::Refused);
                let _ = reply.send(r);
            }
            (Waiter::Report(reply), Ok(report)) => {
                let _ = reply.send(Ok(report.clone()));
            }
            (Waiter::Send { reply, .. }, Err(e)) => {
                let _ = reply.send(Err(ClientError::Store(e)));
            }
            (Waiter::Report(reply), Err(e)) => {
                let _ = reply.send(Err(ClientError::Store(e)));
            }
        }
    }
}

/// A flush under way: rounds of deposit, settle, and maybe pause.
struct Cycle {
    round: usize,
    flushed: Flushed,
    backoff: Backoff,
    waiters: Vec<Waiter>,
    flight: Option<JoinHandle<Vec<Deposit>>>,
    resume_at: Option<Instant>,
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
    Deposited(Result<Vec<Deposit>, JoinError>),
    Resume,
}

/// The running client.
pub(super) struct Task {
    client: Client,
    events: broadcast::Sender<Event>,
    home: Option<Home>,
    backoff: Backoff,
    next_attempt: Instant,
    cycle: Option<Cycle>,
    /// Waiters for the cycle after this one, if another was asked for.
    next_cycle: Option<Vec<Waiter>>,
    /// Ids already reported queued, so a retry does not report them again.
    reported_queued: HashSet<String>,
}

async fn next_frame(home: &mut Option<Home>) -> Result<Option<Frame>, ClientError> {
    match home {
        Some(h) => h.stream.next().await,
        None => std::future::pending().await,
    }
}

async fn landed(cycle: &mut Option<Cycle>) -> Result<Vec<Deposit>, JoinError> {
    match cycle.as_mut().and_then(|c| c.flight.as_mut()) {
        Some(flight) => flight.await,
        None => std::future::pending().await,
    }
}

impl Task {
    pub(super) fn new(client: Client, events: broadcast::Sender<Event>) -> Self {
        Self {
            client,
            events,
            home: None,
            backoff: reconnect_backoff(),
            next_attempt: Instant::now(),
            cycle: None,
            next_cycle: None,
            reported_queued: HashSet::new(),
        }
    }

    fn emit(&self, e: Event) {
        // No receivers is fine: nobody is listening right now.
        let _ = self.events.send(e);
    }

    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let done = loop {
            if self.home.is_none() && Instant::now() >= self.next_attempt {
                self.connect().await;
            }
            let settle = self.home.as_ref().is_some_and(|h| h.intake.has_acks());
            let connected = self.home.is_some();
            let retry_at = self.next_attempt;
            let flying = self.cycle.as_ref().is_some_and(|c| c.flight.is_some());
            let resume_at = self.cycle.as_ref().and_then(|c| c.resume_at);
            let wake = tokio::select! {
                biased;
                c = commands.recv() => Wake::Command(c),
                f = next_frame(&mut self.home), if connected => Wake::Frame(f),
                d = landed(&mut self.cycle), if flying => Wake::Deposited(d),
                _ = tokio::time::sleep(SETTLE_IDLE), if settle => Wake::Settle,
                _ = tokio::time::sleep_until(retry_at), if !connected => Wake::Reconnect,
                _ = sleep_until_some(resume_at), if resume_at.is_some() => Wake::Resume,
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
                Wake::Deposited(d) => self.on_deposited(d).await,
                Wake::Resume => self.launch_round(),
            }
        };
        self.stop().await;
        if let Some(done) = done {
            let _ = done.send(());
        }
    }

    /// Subscribe to the home relay, then deliver what waits in the outbox.
    async fn connect(&mut self) {
        match self.client.subscribe_home().await {
            Ok((link, stream)) => {
                self.home = Some(Home {
                    link,
                    stream,
                    intake: Intake::default(),
                });
                self.emit(Event::Connection { connected: true });
                self.request_flush(None);
            }
            Err(e) => self.retry_later(&e),
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
            Ok(Some(Frame::SendResult(_))) => Ok(()),
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
            .await
    }

    /// Ask for a flush: now if none runs, else right after the one running.
    fn request_flush(&mut self, waiter: Option<Waiter>) {
        if self.cycle.is_none() {
            self.cycle = Some(Cycle {
                round: 0,
                flushed: Flushed {
                    report: OutboxReport::default(),
                    recipients: HashMap::new(),
                },
                backoff: round_backoff(),
                waiters: waiter.into_iter().collect(),
                flight: None,
                resume_at: None,
            });
            self.launch_round();
        } else {
            self.next_cycle.get_or_insert_with(Vec::new).extend(waiter);
        }
    }

    /// Read the outbox and send it off in a task of its own.
    fn launch_round(&mut self) {
        let plan = self.client.plan_round();
        let Some(cycle) = self.cycle.as_mut() else {
            return;
        };
        cycle.resume_at = None;
        match plan {
            Ok(plan) => {
                let mut dialer = self.client.dialer.clone();
                cycle.flight = Some(tokio::spawn(
                    async move { deposit_all(&mut dialer, plan).await },
                ));
            }
            Err(e) => self.end_cycle(Err(e.to_string())),
        }
    }

    /// A round came back: record it, then pause and go again, or finish.
    async fn on_deposited(&mut self, deposits: Result<Vec<Deposit>, JoinError>) {
        let deposits = deposits.unwrap_or_else(|e| {
            warn!("an outbox deposit failed: {e}");
            Vec::new()
        });
        let Some(cycle) = self.cycle.as_mut() else {
            return;
        };
        cycle.flight = None;
        let wait = match self.client.settle_round(deposits, &mut cycle.flushed) {
            Ok(w) => w,
            Err(e) => return self.end_cycle(Err(e.to_string())),
        };
        let queued = !cycle.flushed.report.queued.is_empty();
        match rules::retry_pause(wait, cycle.round, queued) {
            Some(w) => {
                cycle.round += 1;
                cycle.resume_at = Some(Instant::now() + cycle.backoff.next_delay(Some(w)));
            }
            None => {
                let flushed = self.client.store.flush().await.map_err(|e| e.to_string());
                self.end_cycle(flushed);
            }
        }
    }

    /// Finish the cycle: report deliveries, answer its waiters, and start
    /// the next cycle if one was asked for.
    fn end_cycle(&mut self, result: Result<(), String>) {
        let Some(cycle) = self.cycle.take() else {
            return;
        };
        let report = &cycle.flushed.report;
        if result.is_ok() {
            self.report_deliveries(&cycle.flushed);
        }
        for w in cycle.waiters {
            w.answer(result.clone().map(|()| report));
        }
        if let Some(waiters) = self.next_cycle.take() {
            let mut waiters = waiters.into_iter();
            self.request_flush(waiters.next());
            if let Some(c) = self.cycle.as_mut() {
                c.waiters.extend(waiters);
            }
        }
    }

    /// An event per message whose fate is news: sent and failed always,
    /// queued only the first time.
    fn report_deliveries(&mut self, flushed: &Flushed) {
        for (id, status) in rules::statuses(&flushed.report) {
            let fresh = match status {
                DeliveryStatus::Queued { .. } => self.reported_queued.insert(id.clone()),
                _ => {
                    self.reported_queued.remove(&id);
                    true
                }
            };
            if !fresh {
                continue;
            }
            let contact = flushed
                .recipients
                .get(&id)
                .and_then(|k| self.client.store.contact(k).ok().flatten())
                .map(|c| c.name)
                .unwrap_or_default();
            self.emit(Event::Delivery {
                message_id: id,
                contact,
                status,
            });
        }
    }

    async fn serve(&mut self, command: Command) {
        match command {
            Command::SendText {
                contact,
                text,
                reply,
            } => match self.client.queue_text(&contact, &text).await {
                Ok(id) => self.request_flush(Some(Waiter::Send { id, reply })),
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
                    self.request_flush(None);
                }
                let _ = reply.send(r);
            }
            Command::Contacts(reply) => {
                let _ = reply.send(self.client.contacts());
            }
            Command::History {
                contact,
                limit,
                reply,
            } => {
                let _ = reply.send(self.client.history(&contact, limit));
            }
            Command::Block { contact, reply } => {
                let _ = reply.send(self.client.block(&contact).await);
            }
            Command::FlushOutbox(reply) => self.request_flush(Some(Waiter::Report(reply))),
            Command::Profile(reply) => {
                let _ = reply.send(Ok(self.client.profile().clone()));
            }
            Command::Shutdown(_) => {}
        }
    }

    /// Record a deposit in flight, settle what was received, close the home
    /// connection, flush the store, and close the endpoints.
    async fn stop(mut self) {
        let flight = self.cycle.as_mut().and_then(|c| c.flight.take());
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
            if let Some(c) = self.cycle.take() {
                if let Some(f) = c.flight {
                    f.abort();
                }
            }
        }
        if self.home.is_some() {
            if let Err(e) = self.settle().await {
                warn!("settling on shutdown: {e}");
            }
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
