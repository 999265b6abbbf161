//! Presence in the running client: the owner task on each home connection
//! (publish, push endpoint, heartbeats), the watchers of contacts' grants
//! (restarted when a new grant arrives), the states they report, and a
//! `presence` event whenever a contact's combined state changes.

use super::task::Task;
use crate::event::Event;
use crate::presence::owner::{self, OwnerNews, OwnerPlan};
use crate::presence::request::{PresenceRequest, PresenceResult};
use crate::presence::watch::{self, Seen};
use crate::presence::{combine, DeviceState};
use crate::transport::RelayLink;
use std::collections::HashMap;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tracing::warn;

/// Updates buffered from watchers before they wait.
const SEEN_BUFFER: usize = 256;

/// The running client's presence state.
pub(super) struct PresenceRuntime {
    owner: Option<JoinHandle<()>>,
    owner_tx: mpsc::Sender<OwnerNews>,
    pub(super) owner_rx: mpsc::Receiver<OwnerNews>,
    watchers: Option<JoinSet<()>>,
    seen_tx: mpsc::Sender<Seen>,
    pub(super) seen_rx: mpsc::Receiver<Seen>,
    /// The grant generation the watchers were started for.
    generation: Option<u64>,
    /// What each watched device last said.
    states: HashMap<[u8; 32], DeviceState>,
    /// What was last told per contact (identity key): (online, last seen).
    told: HashMap<[u8; 32], (Option<bool>, u64)>,
    /// Contacts when the capability set was last reconciled.
    contacts_seen: Option<usize>,
}

impl Default for PresenceRuntime {
    fn default() -> Self {
        let (owner_tx, owner_rx) = mpsc::channel(8);
        let (seen_tx, seen_rx) = mpsc::channel(SEEN_BUFFER);
        Self {
            owner: None,
            owner_tx,
            owner_rx,
            watchers: None,
            seen_tx,
            seen_rx,
            generation: None,
            states: HashMap::new(),
            told: HashMap::new(),
            contacts_seen: None,
        }
    }
}

impl Drop for PresenceRuntime {
    fn drop(&mut self) {
        if let Some(o) = self.owner.take() {
            o.abort();
        }
    }
}

impl Task {
    /// The home connection came up: publish, register, beat on it.
    pub(super) async fn presence_connected(&mut self, link: RelayLink) {
        if let Some(o) = self.presence.owner.take() {
            o.abort();
        }
        self.presence.contacts_seen = self.client.store.contacts().map(|c| c.len()).ok();
        let (hashes, queued) = match self.client.presence_reconcile().await {
            Ok(r) => r,
            Err(e) => {
                warn!("presence not reconciled: {e}");
                return;
            }
        };
        if queued {
            self.request_flush(Vec::new());
        }
        let settings = match self.client.settings() {
            Ok(s) => s,
            Err(e) => {
                warn!("presence: no settings: {e}");
                return;
            }
        };
        let plan = OwnerPlan {
            hashes,
            hide_last_seen: !settings.last_seen,
            push: Some(settings.push.clone().unwrap_or_default()),
        };
        let news = self.presence.owner_tx.clone();
        self.presence.owner = Some(tokio::spawn(owner::run(link, plan, news)));
    }

    /// A contact came or went (or was blocked, if `force`): grant or
    /// revoke, and tell the relay on the home connection if it is up.
    pub(super) async fn presence_refresh(&mut self, force: bool) {
        let count = self.client.store.contacts().map(|c| c.len()).ok();
        if !force && count == self.presence.contacts_seen {
            return;
        }
        self.presence.contacts_seen = count;
        let link = self.home_link_clone();
        match self.client.publish_presence(link.as_ref()).await {
            Ok(true) => self.request_flush(Vec::new()),
            Ok(false) => {}
            Err(e) => warn!("presence not refreshed: {e}"),
        }
    }

    /// The home connection went down: its heartbeats stop with it.
    pub(super) fn presence_lost(&mut self) {
        if let Some(o) = self.presence.owner.take() {
            o.abort();
        }
    }

    /// (Re)start the watchers if the grants changed since they started.
    pub(super) fn presence_rewatch(&mut self) {
        let generation = match self.client.presence_generation() {
            Ok(g) => g,
            Err(e) => {
                warn!("presence grants unreadable: {e}");
                return;
            }
        };
        if self.presence.generation == Some(generation) {
            return;
        }
        let grants = match self.client.held_grants() {
            Ok(g) => g,
            Err(e) => {
                warn!("presence grants unreadable: {e}");
                return;
            }
        };
        self.presence.generation = Some(generation);
        let tx = self.presence.seen_tx.clone();
        self.presence.watchers = Some(watch::watch_all(&self.client.dialer, grants, tx));
    }

    /// A watched device's state came in: tell the contact's new state if
    /// it changed.
    pub(super) fn on_seen(&mut self, seen: Seen) {
        self.presence
            .states
            .insert(seen.device, (seen.online, seen.last_seen_ms));
        let Ok(grants) = self.client.held_grants() else {
            return;
        };
        let Some(contact) = grants
            .iter()
            .find(|g| g.device == seen.device)
            .map(|g| g.contact)
        else {
            return;
        };
        let states: Vec<&DeviceState> = grants
            .iter()
            .filter(|g| g.contact == contact)
            .filter_map(|g| self.presence.states.get(&g.device))
            .collect();
        let (online, last) = combine(states);
        let last = if online == Some(false) { last } else { 0 };
        if self.presence.told.insert(contact, (online, last)) == Some((online, last)) {
            return;
        }
        let Ok(Some(c)) = self.client.store.contact(&contact) else {
            return;
        };
        self.emit(Event::Presence {
            contact: c.name,
            online: online.unwrap_or(false),
            last_seen_ms: (last != 0).then_some(last),
        });
        // Online now: a direct path may open (issue 18), as when a message
        // from them has just arrived.
        if online == Some(true) {
            self.client.direct_news.note_heard(contact);
            self.act_on_direct_news();
        }
    }

    /// News from the owner task about the push endpoint.
    pub(super) fn on_owner_news(&mut self, news: OwnerNews) {
        let mut s = match self.client.settings() {
            Ok(s) => s,
            Err(_) => return,
        };
        match news {
            OwnerNews::PushDropped => {
                warn!("the home relay dropped the push endpoint: it failed for too long");
                s.push = None;
                s.push_dropped = true;
                if let Err(e) = self.client.store.set_settings(&s) {
                    warn!("settings not saved: {e}");
                }
            }
            OwnerNews::PushRefused(e) => warn!("the home relay refused the push endpoint: {e}"),
        }
    }

    /// A presence command: queries from what the watchers said; changes
    /// told to the home relay on the home connection if it is up.
    pub(super) async fn presence_command(
        &mut self,
        req: PresenceRequest,
    ) -> Result<PresenceResult, crate::error::ClientError> {
        if let PresenceRequest::Query { contact } = &req {
            let states = self
                .client
                .presence_view(&self.presence.states, contact.as_deref())?;
            return Ok(PresenceResult::States { states });
        }
        let link = self.home_link_clone();
        let result = self.client.presence_set(req, link.as_ref()).await?;
        self.request_flush(Vec::new());
        Ok(result)
    }
}
