//! TEST BACKEND for the socket tests: a few contacts and messages in memory
//! and a broadcast channel of events, standing in for the running client's
//! handle. It implements [`RpcBackend`] the way the handle does, with none
//! of its relay work.

use super::server::{EventFeed, FeedItem, RpcBackend};
use crate::store::Profile;
use crate::{
    ClientError, Contact, Event, OutboxReport, ReceivedMessage, SendOutcome, Status, StoredMessage,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

/// TEST BACKEND: in-process state in place of a running client.
#[derive(Clone)]
pub(crate) struct TestBackend {
    pub(crate) state: Arc<Mutex<State>>,
    pub(crate) events: broadcast::Sender<Event>,
}

#[derive(Default)]
pub(crate) struct State {
    contacts: Vec<Contact>,
    messages: Vec<StoredMessage>,
    pub(crate) blocked: Vec<String>,
    sent: u64,
}

fn contact(name: &str, key: u8) -> Contact {
    Contact {
        name: name.into(),
        identity_key: [key; 32],
        signing_key: [key; 32],
        seal_key: [key; 32],
        relay_url: format!("tern://relay.test:4433/#{key}"),
        mailbox_id: [key; 16],
        send_token: [key; 32],
        token_given: Some([key; 32]),
        added_at_ms: 1,
    }
}

impl TestBackend {
    pub(crate) fn new() -> Self {
        let state = State {
            contacts: vec![contact("bob", 2)],
            ..State::default()
        };
        Self {
            state: Arc::new(Mutex::new(state)),
            events: broadcast::channel(8192).0,
        }
    }

    fn named(&self, name: &str) -> Result<Contact, ClientError> {
        let state = self.state.lock().unwrap();
        state
            .contacts
            .iter()
            .find(|c| c.name == name)
            .cloned()
            .ok_or_else(|| ClientError::UnknownContact(name.into()))
    }

    pub(crate) fn emit(&self, from: &str, text: &str, n: u64) {
        let _ = self.events.send(Event::Message(ReceivedMessage {
            id: format!("{n:032x}"),
            from: from.into(),
            text: text.into(),
            sent_at_ms: 1_700_000_000_000 + n,
            received_at_ms: 1_700_000_000_500 + n,
            group: None,
            read: false,
        }));
    }
}

/// TEST BACKEND's event feed.
pub(crate) struct TestFeed(broadcast::Receiver<Event>);

impl EventFeed for TestFeed {
    async fn next(&mut self) -> Option<FeedItem> {
        match self.0.recv().await {
            Ok(e) => Some(FeedItem::Event(e)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(FeedItem::Lagged(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

impl RpcBackend for TestBackend {
    type Events = TestFeed;

    async fn group(
        &self,
        _call: crate::groups::GroupCall,
    ) -> Result<serde_json::Value, ClientError> {
        Err(ClientError::UnknownGroup(
            "(the test backend has none)".into(),
        ))
    }

    async fn send_text(
        &self,
        contact: &str,
        text: &str,
    ) -> Result<(String, SendOutcome), ClientError> {
        let c = self.named(contact)?;
        if text == "slow" {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let mut state = self.state.lock().unwrap();
        state.sent += 1;
        let id = format!("{:032x}", state.sent);
        state.messages.push(StoredMessage {
            id: id.clone(),
            contact: c.identity_key,
            outgoing: true,
            text: text.into(),
            sent_at_ms: 1_700_000_000_000,
            stored_at_ms: 1_700_000_000_000,
            status: Status::Sent,
        });
        Ok((id, SendOutcome::Sent))
    }

    async fn invite(&self) -> Result<String, ClientError> {
        Ok("tern-invite:TEST".into())
    }

    async fn accept(&self, code: &str, name: &str) -> Result<Contact, ClientError> {
        if code != "tern-invite:TEST" {
            return Err(ClientError::Invite(
                tern_protocol::invite::InviteError::Field("code"),
            ));
        }
        if self.named(name).is_ok() {
            return Err(ClientError::ContactExists(name.into()));
        }
        let c = contact(name, 3);
        self.state.lock().unwrap().contacts.push(c.clone());
        Ok(c)
    }

    async fn contacts(&self) -> Result<Vec<Contact>, ClientError> {
        Ok(self.state.lock().unwrap().contacts.clone())
    }

    async fn history(
        &self,
        contact: &str,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, ClientError> {
        let c = self.named(contact)?;
        let state = self.state.lock().unwrap();
        let all: Vec<_> = state
            .messages
            .iter()
            .filter(|m| m.contact == c.identity_key)
            .cloned()
            .collect();
        Ok(all[all.len().saturating_sub(limit)..].to_vec())
    }

    async fn block(&self, contact: &str) -> Result<(), ClientError> {
        self.named(contact)?;
        self.state.lock().unwrap().blocked.push(contact.into());
        Ok(())
    }

    async fn flush_outbox(&self) -> Result<OutboxReport, ClientError> {
        Ok(OutboxReport::default())
    }

    async fn trust(
        &self,
        req: crate::trust::TrustRequest,
    ) -> Result<crate::trust::TrustResult, ClientError> {
        // The in-memory backend keeps no invites or keys: only which
        // contacts are verified (none).
        match req {
            crate::trust::TrustRequest::Verified => Ok(crate::trust::TrustResult::Verified {
                contacts: self
                    .state
                    .lock()
                    .unwrap()
                    .contacts
                    .iter()
                    .map(|c| (c.name.clone(), false))
                    .collect(),
            }),
            _ => Err(ClientError::Store("not kept by the test backend".into())),
        }
    }
    async fn profile(&self) -> Result<Profile, ClientError> {
        Ok(Profile {
            name: "alice".into(),
            relay_url: "tern://relay.test:4433/#1".into(),
            mailbox_id: [1; 16],
        })
    }

    fn subscribe(&self) -> TestFeed {
        TestFeed(self.events.subscribe())
    }
}
