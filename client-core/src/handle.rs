//! A running client: [`spawn`] moves a [`Client`] into a task of its own
//! that stays subscribed to the home relay (receive, store, show, then ack;
//! reconnecting with jittered backoff), flushes the outbox whenever it
//! (re)connects and after every send, and serves commands from any number
//! of cloned [`ClientHandle`]s. What happens comes out as [`Event`]s on a
//! broadcast channel: a slow receiver misses events (and is told how many,
//! [`Event::Lagged`]) but never holds the client up.
//!
//! The task is the only owner of the store and the connections, so an app
//! (or a TUI, or a local RPC server) can send while it receives.

use crate::client::Client;
use crate::error::ClientError;
use crate::event::{DeliveryStatus, Event, OutboxReport, SendOutcome};
use crate::inbox::{reconnect_backoff, retry_after, Intake, SETTLE_IDLE};
use crate::outbox::{outcome, statuses, Flushed};
use crate::store::{Contact, Profile, StoredMessage};
use crate::transport::{MessageStream, RelayLink};
use std::collections::HashSet;
use std::time::Duration;
use tern_protocol::pb::relay_frame::Frame;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tracing::warn;

/// Events a receiver may fall behind by before it starts missing them.
const EVENT_BUFFER: usize = 1024;
/// Commands waiting for the task before senders wait.
const COMMAND_BUFFER: usize = 64;

type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

/// What a handle asks of the running client.
enum Command {
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

/// Start the client task: it owns `client` (store and connections), stays
/// connected to the home relay, flushes the outbox, and serves commands.
/// Must be called within a tokio runtime. The task stops on
/// [`ClientHandle::shutdown`] or once every handle is dropped.
pub fn spawn(client: Client) -> (ClientHandle, EventStream) {
    let (commands, inbox) = mpsc::channel(COMMAND_BUFFER);
    let (events, first) = broadcast::channel(EVENT_BUFFER);
    let handle = ClientHandle {
        commands,
        events: events.downgrade(),
    };
    let task = Task {
        client,
        events,
        home: None,
        backoff: reconnect_backoff(),
        next_attempt: Instant::now(),
        reported_queued: HashSet::new(),
    };
    tokio::spawn(task.run(inbox));
    (handle, EventStream { rx: first })
}

/// A cloneable way to drive a running client.
#[derive(Clone)]
pub struct ClientHandle {
    commands: mpsc::Sender<Command>,
    // Weak, so that event streams end when the task does.
    events: broadcast::WeakSender<Event>,
}

impl ClientHandle {
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| ClientError::Stopped)?;
        answer.await.map_err(|_| ClientError::Stopped)?
    }

    /// Send a text to the contact named `contact` (see
    /// [`Client::send_text`]); delivery events follow on the event stream.
    pub async fn send_text(&self, contact: &str, text: &str) -> Result<SendOutcome, ClientError> {
        Ok(self.send_text_with_id(contact, text).await?.1)
    }

    /// [`ClientHandle::send_text`], also returning the message id (hex) that
    /// its delivery events carry.
    pub async fn send_text_with_id(
        &self,
        contact: &str,
        text: &str,
    ) -> Result<(String, SendOutcome), ClientError> {
        let (contact, text) = (contact.to_string(), text.to_string());
        self.ask(|reply| Command::SendText {
            contact,
            text,
            reply,
        })
        .await
    }

    /// Make an invite code (see [`Client::invite`]).
    pub async fn invite(&self) -> Result<String, ClientError> {
        self.ask(Command::Invite).await
    }

    /// Accept an invite code (see [`Client::accept`]).
    pub async fn accept(&self, code: &str, name: &str) -> Result<Contact, ClientError> {
        let (code, name) = (code.to_string(), name.to_string());
        self.ask(|reply| Command::Accept { code, name, reply })
            .await
    }

    /// All contacts.
    pub async fn contacts(&self) -> Result<Vec<Contact>, ClientError> {
        self.ask(Command::Contacts).await
    }

    /// The last `limit` messages with `contact`, oldest first.
    pub async fn history(
        &self,
        contact: &str,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, ClientError> {
        let contact = contact.to_string();
        self.ask(|reply| Command::History {
            contact,
            limit,
            reply,
        })
        .await
    }

    /// Block a contact (see [`Client::block`]).
    pub async fn block(&self, contact: &str) -> Result<(), ClientError> {
        let contact = contact.to_string();
        self.ask(|reply| Command::Block { contact, reply }).await
    }

    /// Try to deliver everything in the outbox now.
    pub async fn flush_outbox(&self) -> Result<OutboxReport, ClientError> {
        self.ask(Command::FlushOutbox).await
    }

    /// This device's profile.
    pub async fn profile(&self) -> Result<Profile, ClientError> {
        self.ask(Command::Profile).await
    }

    /// A new receiver of every event from now on (for a second front-end,
    /// e.g. an RPC client). Ends at once if the client has stopped.
    pub fn subscribe(&self) -> EventStream {
        let rx = match self.events.upgrade() {
            Some(tx) => tx.subscribe(),
            None => broadcast::channel(1).1,
        };
        EventStream { rx }
    }

    /// Stop the task; resolves once what was received is stored and
    /// acknowledged, the store is flushed and connections are closed.
    pub async fn shutdown(&self) {
        let (done, finished) = oneshot::channel();
        if self.commands.send(Command::Shutdown(done)).await.is_ok() {
            let _ = finished.await;
        }
    }
}

/// The events of a running client, from when it was subscribed.
pub struct EventStream {
    rx: broadcast::Receiver<Event>,
}

impl EventStream {
    /// The next event; [`Event::Lagged`] if this receiver fell behind;
    /// `None` once the client has stopped.
    pub async fn next(&mut self) -> Option<Event> {
        match self.rx.recv().await {
            Ok(e) => Some(e),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some(Event::Lagged { missed }),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
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
}

/// The running client.
struct Task {
    client: Client,
    events: broadcast::Sender<Event>,
    home: Option<Home>,
    backoff: crate::backoff::Backoff,
    next_attempt: Instant,
    /// Ids already reported queued, so a retry does not report them again.
    reported_queued: HashSet<String>,
}

async fn next_frame(home: &mut Option<Home>) -> Result<Option<Frame>, ClientError> {
    match home {
        Some(h) => h.stream.next().await,
        None => std::future::pending().await,
    }
}

impl Task {
    fn emit(&self, e: Event) {
        // No receivers is fine: nobody is listening right now.
        let _ = self.events.send(e);
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let done = loop {
            if self.home.is_none() && Instant::now() >= self.next_attempt {
                self.connect().await;
            }
            let settle = self.home.as_ref().is_some_and(|h| h.intake.has_acks());
            let connected = self.home.is_some();
            let retry_at = self.next_attempt;
            let wake = tokio::select! {
                biased;
                c = commands.recv() => Wake::Command(c),
                f = next_frame(&mut self.home), if connected => Wake::Frame(f),
                _ = tokio::time::sleep(SETTLE_IDLE), if settle => Wake::Settle,
                _ = tokio::time::sleep_until(retry_at), if !connected => Wake::Reconnect,
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
                self.deliver().await.ok();
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

    async fn take(&mut self, env: tern_protocol::pb::Envelope) -> Result<(), ClientError> {
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

    /// Flush the outbox and report each message's fate once.
    async fn deliver(&mut self) -> Result<OutboxReport, ClientError> {
        let Flushed { report, recipients } = self.client.deliver().await?;
        for (id, status) in statuses(&report) {
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
            let contact = recipients
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
        Ok(report)
    }

    async fn serve(&mut self, command: Command) {
        match command {
            Command::SendText {
                contact,
                text,
                reply,
            } => {
                let r = async {
                    let id = self.client.queue_text(&contact, &text).await?;
                    let report = self.deliver().await?;
                    let o = outcome(&report, &id).map_err(ClientError::Refused)?;
                    Ok((id, o))
                }
                .await;
                let _ = reply.send(r);
            }
            Command::Invite(reply) => {
                let _ = reply.send(self.client.invite().await);
            }
            Command::Accept { code, name, reply } => {
                let r = self.client.accept_queued(&code, &name).await;
                if r.is_ok() {
                    self.deliver().await.ok();
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
            Command::FlushOutbox(reply) => {
                let _ = reply.send(self.deliver().await);
            }
            Command::Profile(reply) => {
                let _ = reply.send(Ok(self.client.profile().clone()));
            }
            Command::Shutdown(_) => {}
        }
    }

    /// Settle what was received, close the home connection, flush the store.
    async fn stop(mut self) {
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
