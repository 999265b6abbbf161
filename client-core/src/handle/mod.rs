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

mod direct;
mod flush;
mod presence;
mod task;

use crate::client::Client;
use crate::error::ClientError;
use crate::event::{Event, OutboxReport, SendOutcome};
use crate::groups::GroupCall;
use crate::receipts::MessageReport;
use crate::settings::Settings;
use crate::store::{Contact, Profile, StoredMessage};
use crate::typing::TypingOutcome;
use task::{Command, Reply, Task};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Events a receiver may fall behind by before it starts missing them.
const EVENT_BUFFER: usize = 1024;
/// Commands waiting for the task before senders wait.
const COMMAND_BUFFER: usize = 64;

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
    tokio::spawn(Task::new(client, events).run(inbox));
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

    /// Run a group command (see [`Client::group_call`]). Its network work
    /// (minting a card's token, delivering) runs in the client's task, so
    /// receiving waits meanwhile.
    pub async fn group(&self, call: GroupCall) -> Result<serde_json::Value, ClientError> {
        self.ask(|reply| Command::Group { call, reply }).await
    }

    /// This device's profile.
    pub async fn profile(&self) -> Result<Profile, ClientError> {
        self.ask(Command::Profile).await
    }

    /// Where a message we sent stands, per recipient (`tern status`).
    pub async fn message_status(&self, id: &str) -> Result<MessageReport, ClientError> {
        let id = id.to_string();
        self.ask(|reply| Command::Status { id, reply }).await
    }

    /// Tell `contact` we are typing (see [`Client::send_typing`]).
    pub async fn send_typing(&self, contact: &str) -> Result<TypingOutcome, ClientError> {
        let contact = contact.to_string();
        self.ask(|reply| Command::Typing { contact, reply }).await
    }

    /// The settings, after setting read receipts if `read_receipts` is
    /// given.
    pub async fn settings(&self, read_receipts: Option<bool>) -> Result<Settings, ClientError> {
        self.ask(|reply| Command::Settings {
            read_receipts,
            reply,
        })
        .await
    }

    /// Run a trust operation ([`crate::trust`]) in the running client.
    pub async fn trust(
        &self,
        req: crate::trust::TrustRequest,
    ) -> Result<crate::trust::TrustResult, ClientError> {
        self.ask(|reply| Command::Trust { req, reply }).await
    }

    /// Run a history operation ([`crate::history`]) in the running client.
    pub async fn presence_op(
        &self,
        req: crate::presence::request::PresenceRequest,
    ) -> Result<crate::presence::request::PresenceResult, ClientError> {
        self.ask(|reply| Command::PresenceOp { req, reply }).await
    }

    /// A history operation ([`crate::history`]) in the running client.
    pub async fn history_op(
        &self,
        req: crate::history::request::HistoryRequest,
    ) -> Result<crate::history::request::HistoryResult, ClientError> {
        self.ask(|reply| Command::HistoryOp { req, reply }).await
    }

    /// Set with whom direct paths open (`tern settings direct`).
    pub async fn set_direct(
        &self,
        mode: crate::settings::DirectMode,
    ) -> Result<Settings, ClientError> {
        self.ask(|reply| Command::SetDirect { mode, reply }).await
    }

    /// Whether a direct path to `contact` is open, and its round-trip time.
    pub async fn path_info(&self, contact: &str) -> Result<crate::direct::PathInfo, ClientError> {
        let contact = contact.to_string();
        self.ask(|reply| Command::PathInfo { contact, reply }).await
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalStore;
    use tern_crypto::StoreKey;

    fn offline_client(dir: &std::path::Path) -> Client {
        Client::offline_for_tests(dir)
    }

    #[tokio::test]
    async fn handles_serve_the_store_and_stop_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let (handle, mut events) = spawn(offline_client(dir.path()));
        let other = handle.clone();
        assert_eq!(other.profile().await.unwrap().name, "ann");
        assert!(handle.contacts().await.unwrap().is_empty());
        assert!(matches!(
            other.send_text("nobody", "hi").await,
            Err(ClientError::UnknownContact(_))
        ));
        let report = handle.flush_outbox().await.unwrap();
        assert!(report.sent.is_empty() && report.queued.is_empty());

        handle.shutdown().await;
        assert_eq!(events.next().await, None, "the stream ends with the task");
        assert!(handle.subscribe().next().await.is_none());
        assert!(matches!(other.contacts().await, Err(ClientError::Stopped)));
        // The store is closed: it opens again.
        LocalStore::open(&dir.path().join("store"), StoreKey::generate()).unwrap();
    }

    #[tokio::test]
    async fn a_slow_receiver_is_told_what_it_missed() {
        let (tx, rx) = broadcast::channel(4);
        let mut stream = EventStream { rx };
        for _ in 0..10 {
            tx.send(Event::Connection { connected: true }).unwrap();
        }
        assert_eq!(stream.next().await, Some(Event::Lagged { missed: 6 }));
        assert_eq!(
            stream.next().await,
            Some(Event::Connection { connected: true })
        );
    }

    #[tokio::test]
    async fn dropping_every_handle_stops_the_client() {
        let dir = tempfile::tempdir().unwrap();
        let (handle, mut events) = spawn(offline_client(dir.path()));
        drop(handle);
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), events.next());
        assert_eq!(ended.await.unwrap(), None);
    }
}
