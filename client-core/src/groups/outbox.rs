//! Sending to a group: share our Megolm session key with members who lack
//! it (starting a new session first if anyone it was shared with has left),
//! encrypt the text once, and put one item in the group outbox with every
//! member's (relay, mailbox, token). A flush deposits each item with one
//! multi-recipient send per relay, after every pairwise item queued before
//! it for one of its members (the keys must reach a mailbox before the
//! message they open).
//! Retries are safe: relays and recipients de-duplicate by message id.

use super::control::card_contact;
use super::{envelope, message_key, GroupMessage, Outbound, MESSAGES, OUTBOX};
use crate::client::{now_ms, random16, Client};
use crate::error::ClientError;
use crate::event::OutboxReport;
use crate::layers;
use crate::outbox::rules::{decide, Decision};
use crate::store::Status;
use crate::transport::{Dialer, OutgoingMany, Stored};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use tern_crypto::{new_envelope_key, GroupSender};
use tern_protocol::pb::{self, content::Body};
use tern_protocol::url::RelayUrl;
use tern_protocol::WireError;
use tracing::debug;

/// Why a message waits for members who have not published a card yet.
const WAITING_FOR_CARDS: &str = "waiting for a member's card";

/// Why a target waits before its key went out.
const WAITING_FOR_KEYS: &str = "waiting for the group's keys to go out";

/// Targets per multi-recipient send (the relay's default limit).
const MAX_TARGETS: usize = 1000;

/// One member's mailbox for a group message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Target {
    /// The member's identity key.
    pub member: [u8; 32],
    /// Its relay.
    pub relay_url: String,
    /// Its mailbox.
    pub mailbox_id: [u8; 16],
    /// A token for it.
    pub token: [u8; 32],
    /// Another device of the member (or of our own account) than the
    /// member's own: a quiet copy, no status of its own.
    #[serde(default)]
    pub device: Option<[u8; 32]>,
}

/// A group message waiting for (some of) its relays.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct GroupOutboxItem {
    /// Position among all outbox items (shared with the pairwise outbox).
    pub position: u64,
    /// Message id, the same for every target.
    pub message_id: [u8; 16],
    /// Key of the conversation entry.
    pub message_key: Vec<u8>,
    /// The one payload.
    pub payload: Vec<u8>,
    /// Targets not yet stored by their relay.
    pub targets: Vec<Target>,
    /// Members we could not reach when it was sent (no card yet): they
    /// get the session key as of this message and the message itself once
    /// their card arrives ([`Client::plan_group_round`]).
    #[serde(default)]
    pub pending: Vec<[u8; 32]>,
    /// The session key as of this message (exported before encrypting
    /// it), for the pending members; kept only while some are pending.
    #[serde(default)]
    pub session_key: Option<Vec<u8>>,
    /// The envelope key of the session it was sent in.
    #[serde(default)]
    pub envelope_key: Option<[u8; 32]>,
}

impl Client {
    /// Send `text` to the group `name`: queued on disk, then delivered.
    /// Returns its id and what the outbox flush said.
    pub async fn group_send(
        &mut self,
        name: &str,
        text: &str,
    ) -> Result<(String, OutboxReport), ClientError> {
        let id = self.queue_group_text(name, text)?;
        self.store.flush().await?;
        let report = self.flush_outbox().await?;
        Ok((id, report))
    }

    /// Queue `text` for the group `name` without delivering it; its id.
    pub(crate) fn queue_group_text(
        &mut self,
        name: &str,
        text: &str,
    ) -> Result<String, ClientError> {
        let mut r = self.group_named(name)?;
        // This device, which signs the message; `my_member` is the member
        // it acts for (itself, or another device of our account).
        let me = self.account.identity_key();
        let st = self.group_state(&r);
        let Some(my_member) = self.my_member(&st)? else {
            return Err(ClientError::GroupRefused(format!(
                "you are not a member of {name:?}"
            )));
        };
        let others: Vec<[u8; 32]> = st
            .members
            .keys()
            .filter(|k| **k != my_member)
            .copied()
            .collect();
        let cards = r.cards_by_member(&st);
        // The members' other devices and our own other devices.
        let extra = self.extra_group_devices(&st, &cards, &my_member)?;
        let mut reached: Vec<[u8; 32]> = others.clone();
        reached.extend(extra.iter().map(|e| e.target.identity_key));
        // A member or device our session was shared with has gone: start
        // anew.
        let rotate = r.outbound.is_none() || super::devices::shared_beyond(&r, &reached);
        if rotate {
            r.outbound = Some(Outbound {
                pickle: GroupSender::new().to_encrypted_pickle(&self.key),
                envelope_key: new_envelope_key(),
                members: others.clone(),
                shared_with: Vec::new(),
            });
        }
        let Some(mut out) = r.outbound.clone() else {
            return Err(ClientError::Store("no group session".into()));
        };
        let mut sender = GroupSender::from_encrypted_pickle(&out.pickle, &self.key)?;
        // The key, at the current index, to whoever lacks it.
        for m in &others {
            if out.shared_with.contains(m) {
                continue;
            }
            let key = Body::GroupKey(pb::GroupKey {
                group_id: r.id.to_vec().into(),
                session_key: sender.session_key().into(),
                envelope_key: out.envelope_key.to_vec().into(),
            });
            if self.send_control_to(&st, &cards, m, key)? {
                out.shared_with.push(*m);
            }
        }
        for e in &extra {
            let d = e.target.identity_key;
            if out.shared_with.contains(&d) {
                continue;
            }
            let key = Body::GroupKey(pb::GroupKey {
                group_id: r.id.to_vec().into(),
                session_key: sender.session_key().into(),
                envelope_key: out.envelope_key.to_vec().into(),
            });
            if self.send_control_to_device(&e.target, key)? {
                out.shared_with.push(d);
            }
        }
        let msg_id = random16();
        let at = now_ms();
        // The key as of this message, for members reached only later.
        let key_now = sender.session_key();
        let content = layers::content(msg_id, at, layers::text_body(text));
        let payload = envelope::seal_group(&mut sender, &out.envelope_key, &r.id, &me, &content);
        layers::check_size(&payload).map_err(|layers::SealError::TooLarge { size, max }| {
            ClientError::TooLarge { size, max }
        })?;
        out.pickle = sender.to_encrypted_pickle(&self.key);
        r.outbound = Some(out.clone());
        // The advanced session is saved before the message exists, so no
        // index is ever used twice.
        self.put_group(&r)?;
        let mut targets = Vec::new();
        let mut pending = Vec::new();
        let mut status = BTreeMap::new();
        for m in &others {
            let reach = match cards.get(m).and_then(|c| card_contact(&st, c)) {
                Some(c) => Some(c),
                None => self.store.contact(m)?,
            };
            match reach {
                Some(c) if out.shared_with.contains(m) => {
                    targets.push(Target {
                        member: *m,
                        relay_url: c.relay_url,
                        mailbox_id: c.mailbox_id,
                        token: c.send_token,
                        device: None,
                    });
                    status.insert(hex::encode(m), Status::Queued);
                }
                _ => {
                    // No card yet: it waits for one (plan_group_round).
                    status.insert(hex::encode(m), Status::Queued);
                    pending.push(*m);
                }
            }
        }
        for e in extra
            .iter()
            .filter(|e| out.shared_with.contains(&e.target.identity_key))
        {
            targets.push(Target {
                member: e.member,
                relay_url: e.target.relay_url.clone(),
                mailbox_id: e.target.mailbox_id,
                token: e.target.token,
                device: Some(e.target.identity_key),
            });
        }
        let key = message_key(&r.id, at, &msg_id);
        // Status per member for `tern status`: every member is a recipient.
        self.track_sent(&msg_id, &key, &others)?;
        self.store.note_history(true, &key)?;
        self.put_group_message(
            &key,
            &GroupMessage {
                id: hex::encode(msg_id),
                group: r.id,
                author: me,
                from: self.profile.name.clone(),
                outgoing: true,
                text: text.to_string(),
                sent_at_ms: at,
                stored_at_ms: at,
                status,
            },
        )?;
        let item = GroupOutboxItem {
            position: self.store.next_position()?,
            message_id: msg_id,
            message_key: key,
            payload,
            targets,
            session_key: (!pending.is_empty()).then_some(key_now),
            envelope_key: (!pending.is_empty()).then_some(out.envelope_key),
            pending,
        };
        let tree = self.store.tree(OUTBOX)?;
        self.store
            .put_in(&tree, OUTBOX, &item.position.to_be_bytes(), &item)?;
        Ok(hex::encode(msg_id))
    }

    /// Deposit the group outbox: each item whose members' earlier pairwise
    /// items (their keys) are out, one multi-recipient send per relay. Adds
    /// to `report`.
    pub(crate) async fn flush_group_outbox(
        &mut self,
        report: &mut OutboxReport,
    ) -> Result<(), ClientError> {
        let mut plans = self.plan_group_round()?;
        if plans.is_empty() {
            return Ok(());
        }
        self.store.flush().await?;
        deposit_groups(&mut self.dialer, &mut plans, None).await;
        self.settle_group_round(plans, report)?;
        Ok(())
    }

    /// The group outbox for one round (store only): per item, the targets
    /// to deposit now and those waiting for their keys to go out first.
    pub(crate) fn plan_group_round(&self) -> Result<Vec<GroupDeposit>, ClientError> {
        let tree = self.store.tree(OUTBOX)?;
        let items = self.store.scan_in::<GroupOutboxItem>(&tree, OUTBOX, &[])?;
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let pairwise: Vec<[u8; 32]> = self.store.outbox()?.iter().map(|i| i.contact).collect();
        let mut plans = Vec::with_capacity(items.len());
        for (key, item) in items {
            // Members with a pairwise item not out yet (their key may be
            // in it) wait; the others get it now.
            let (waiting, ready): (Vec<Target>, Vec<Target>) = item
                .targets
                .iter()
                .cloned()
                .partition(|t| pairwise.contains(&t.device.unwrap_or(t.member)));
            plans.push(GroupDeposit {
                key,
                now: GroupOutboxItem {
                    targets: ready,
                    ..item.clone()
                },
                item,
                waiting,
                results: Vec::new(),
            });
        }
        Ok(plans)
    }

    /// Queue the session keys for members of waiting group messages whose
    /// cards arrived since (see [`Self::reach_pending`]). Runs before each
    /// round is planned, so the keys go in the pairwise part of the round
    /// and the messages right after them.
    pub(crate) fn reach_pending_members(&self) -> Result<(), ClientError> {
        let tree = self.store.tree(OUTBOX)?;
        for (key, mut item) in self.store.scan_in::<GroupOutboxItem>(&tree, OUTBOX, &[])? {
            if !item.pending.is_empty() && self.reach_pending(&mut item)? {
                self.store.put_in(&tree, OUTBOX, &key, &item)?;
            }
        }
        Ok(())
    }

    /// Members of `item` who were not reachable when it was sent: each
    /// whose card has arrived gets the session key as of the message (a
    /// pairwise control message) and becomes a target; each no longer a
    /// member is dropped. Returns whether `item` changed.
    fn reach_pending(&self, item: &mut GroupOutboxItem) -> Result<bool, ClientError> {
        let Some(group) = item
            .message_key
            .get(..16)
            .and_then(|g| <[u8; 16]>::try_from(g).ok())
        else {
            return Ok(false);
        };
        let (Some(session_key), Some(envelope_key)) = (item.session_key.clone(), item.envelope_key)
        else {
            return Ok(false);
        };
        let Some(mut r) = self.group_record(&group)? else {
            return Ok(false);
        };
        let st = self.group_state(&r);
        let cards = r.cards_by_member(&st);
        let mut changed = false;
        let mut shared = Vec::new();
        for m in std::mem::take(&mut item.pending) {
            if !st.is_member(&m) {
                self.note_relay_answer(&item.message_id, &m, Err("no longer a member"))?;
                changed = true;
                continue;
            }
            let reach = match cards.get(&m).and_then(|c| card_contact(&st, c)) {
                Some(c) => Some(c),
                None => self.store.contact(&m)?,
            };
            let Some(c) = reach else {
                item.pending.push(m);
                continue;
            };
            let key = Body::GroupKey(pb::GroupKey {
                group_id: group.to_vec().into(),
                session_key: session_key.clone().into(),
                envelope_key: envelope_key.to_vec().into(),
            });
            if !self.send_control_to(&st, &cards, &m, key)? {
                item.pending.push(m);
                continue;
            }
            item.targets.push(Target {
                member: m,
                relay_url: c.relay_url,
                mailbox_id: c.mailbox_id,
                token: c.send_token,
                device: None,
            });
            shared.push(m);
            changed = true;
        }
        if item.pending.is_empty() {
            item.session_key = None;
        }
        // Our session as it is now opens from that key on: its next
        // messages need not share it again.
        if let Some(out) = r
            .outbound
            .as_mut()
            .filter(|o| o.envelope_key == envelope_key)
        {
            let fresh: Vec<[u8; 32]> = shared
                .into_iter()
                .filter(|m| !out.shared_with.contains(m))
                .collect();
            if !fresh.is_empty() {
                out.shared_with.extend(fresh);
                self.put_group(&r)?;
            }
        }
        Ok(changed)
    }

    /// Record a round of the group outbox (store only): per target, sent,
    /// failed for good or still queued; add to `report`. Returns whether a
    /// target waited for its key (another round, once the pairwise outbox
    /// moved, delivers it).
    pub(crate) fn settle_group_round(
        &self,
        plans: Vec<GroupDeposit>,
        report: &mut OutboxReport,
    ) -> Result<bool, ClientError> {
        let tree = self.store.tree(OUTBOX)?;
        let mut keys_waited = false;
        for GroupDeposit {
            key,
            mut item,
            waiting,
            now,
            results,
        } in plans
        {
            let id = hex::encode(item.message_id);
            keys_waited |= !waiting.is_empty();
            let mut left = waiting;
            let mut reason = (!left.is_empty()).then(|| WAITING_FOR_KEYS.to_string());
            if !item.pending.is_empty() {
                reason.get_or_insert_with(|| WAITING_FOR_CARDS.to_string());
            }
            let mut entry = self.group_message_at(&item.message_key)?;
            for (t, res) in now.targets.iter().zip(results) {
                let member = hex::encode(t.member);
                if t.device.is_some() {
                    // Another device's copy: retried, never reported.
                    match decide(Some(res)) {
                        Decision::Retire | Decision::Fail(_) => {}
                        Decision::Keep { .. } | Decision::HeldBack => left.push(t.clone()),
                    }
                    continue;
                }
                match decide(Some(res)) {
                    Decision::Retire => {
                        set_status(&mut entry, &member, Status::Sent);
                        self.note_relay_answer(&item.message_id, &t.member, Ok(()))?;
                    }
                    Decision::Fail(e) => {
                        set_status(&mut entry, &member, Status::Failed(e.to_string()));
                        self.note_relay_answer(&item.message_id, &t.member, Err(&e.to_string()))?;
                    }
                    Decision::Keep { reason: why, .. } => {
                        reason.get_or_insert(why);
                        left.push(t.clone());
                    }
                    Decision::HeldBack => left.push(t.clone()),
                }
            }
            if let Some(e) = &entry {
                self.put_group_message(&item.message_key, e)?;
            }
            if left.is_empty() && item.pending.is_empty() {
                tree.remove(&key)?;
                report.sent.push(id);
            } else {
                item.targets = left;
                self.store.put_in(&tree, OUTBOX, &key, &item)?;
                report.queued.push((
                    id,
                    reason.unwrap_or_else(|| "a member's relay is unreachable".into()),
                ));
            }
        }
        Ok(keys_waited)
    }

    fn group_message_at(&self, key: &[u8]) -> Result<Option<GroupMessage>, ClientError> {
        let tree = self.store.tree(MESSAGES)?;
        self.store.get_in(
            &tree,
            MESSAGES,
            &super::group_message_slot(&self.store, key),
        )
    }
}

fn set_status(entry: &mut Option<GroupMessage>, member: &str, s: Status) {
    if let Some(e) = entry {
        e.status.insert(member.to_string(), s);
    }
}

/// One group outbox item's part of a round: what to deposit now, what
/// waits, and (after [`deposit_groups`]) what the relays said.
pub(crate) struct GroupDeposit {
    key: Vec<u8>,
    item: GroupOutboxItem,
    waiting: Vec<Target>,
    now: GroupOutboxItem,
    results: Vec<Result<Stored, WireError>>,
}

/// Deposit a round of the group outbox (network only, no client: the
/// running client runs it beside receiving), item after item. With
/// `paths` (a running client), a group of two goes over the path to the
/// other member when one is open (`direct::deposit::group_direct`); what
/// the path does not ack goes through the relay.
pub(crate) async fn deposit_groups(
    dialer: &mut Dialer,
    plans: &mut [GroupDeposit],
    paths: Option<&crate::direct::Paths>,
) {
    for p in plans.iter_mut() {
        if p.now.targets.is_empty() {
            continue;
        }
        let direct = match paths {
            Some(paths) => crate::direct::deposit::group_direct(paths, &p.item, &p.now).await,
            None => Vec::new(),
        };
        p.results = if direct.is_empty() {
            deposit_many(dialer, &p.now).await
        } else {
            // Targets the path acked are stored; the rest go to relays.
            let rest = GroupOutboxItem {
                targets: (p.now.targets.iter().zip(&direct))
                    .filter(|(_, acked)| !**acked)
                    .map(|(t, _)| t.clone())
                    .collect(),
                ..p.now.clone()
            };
            let mut relayed = if rest.targets.is_empty() {
                Vec::new()
            } else {
                deposit_many(dialer, &rest).await
            }
            .into_iter();
            direct
                .iter()
                .map(|acked| match acked {
                    true => Ok(Stored),
                    false => relayed.next().unwrap_or_else(|| {
                        Err(WireError::new(
                            tern_protocol::ErrorCode::Internal,
                            "not sent",
                        ))
                    }),
                })
                .collect()
        };
    }
}

/// One result per target of `item`: its relays, one multi-recipient send
/// (per 1,000 targets) each, on connections of their own.
async fn deposit_many(
    dialer: &mut Dialer,
    item: &GroupOutboxItem,
) -> Vec<Result<Stored, WireError>> {
    let mut results: Vec<Result<Stored, WireError>> = vec![
        Err(WireError::new(
            tern_protocol::ErrorCode::Internal,
            "not sent"
        ));
        item.targets.len()
    ];
    let mut by_relay: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, t) in item.targets.iter().enumerate() {
        by_relay.entry(&t.relay_url).or_default().push(i);
    }
    for (relay, idx) in by_relay {
        match deposit_on(dialer, relay, item, &idx).await {
            Ok(got) => {
                for (i, r) in idx.into_iter().zip(got) {
                    results[i] = r;
                }
            }
            Err(e) => {
                debug!("group message for {relay} stays queued: {e}");
                let w = match e {
                    ClientError::Refused(w) => w,
                    other => WireError::new(tern_protocol::ErrorCode::Internal, other.to_string()),
                };
                for i in idx {
                    results[i] = Err(w.clone());
                }
            }
        }
    }
    results
}

async fn deposit_on(
    dialer: &mut Dialer,
    relay: &str,
    item: &GroupOutboxItem,
    idx: &[usize],
) -> Result<Vec<Result<Stored, WireError>>, ClientError> {
    let url: RelayUrl = relay.parse()?;
    let link = dialer.connect_unlinked(&url).await?;
    let mut stream = link.messages().await?;
    let mut out = Vec::with_capacity(idx.len());
    for chunk in idx.chunks(MAX_TARGETS) {
        let m = OutgoingMany {
            message_id: item.message_id,
            payload: item.payload.clone(),
            targets: chunk
                .iter()
                .map(|&i| (item.targets[i].mailbox_id, item.targets[i].token))
                .collect(),
            ephemeral: false,
        };
        out.extend(stream.send_many(&m).await?);
    }
    stream.finish(Duration::from_secs(2)).await;
    link.close();
    Ok(out)
}
