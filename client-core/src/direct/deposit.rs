//! A flush round with direct paths: the items for a contact with an open
//! path go over it first, in outbox order, and count as handed over only
//! when the peer acks them; everything else — items for contacts without a
//! path, and whatever a path did not ack — is deposited on the relays as
//! before ([`crate::outbox::deposit_all`]). So the outbox stays the one
//! source of truth: an item is retired on a direct ack or a relay's
//! answer, never before.
//!
//! Group messages go through the relay (one upload for every member),
//! except in a group of two: there the one other member's target goes over
//! the path to it when one is open ([`group_direct`]).

use super::link::DirectItem;
use super::Paths;
use crate::groups::GroupOutboxItem;
use crate::outbox::{deposit_all as relay_deposit_all, Deposit};
use crate::store::{ContactId, OutboxItem};
use crate::transport::{Dialer, Stored};
use std::collections::{BTreeMap, HashMap};

/// Deposit a round's plan, direct where a path is open.
pub(crate) async fn deposit_all(
    paths: &Paths,
    dialer: &mut Dialer,
    mut plan: BTreeMap<String, Vec<OutboxItem>>,
) -> Vec<Deposit> {
    // Per contact with a path, its items in outbox order.
    let mut by_contact: HashMap<ContactId, Vec<OutboxItem>> = HashMap::new();
    for items in plan.values_mut() {
        let (direct, relay): (Vec<OutboxItem>, Vec<OutboxItem>) = std::mem::take(items)
            .into_iter()
            .partition(|i| paths.get(&i.contact).is_some());
        *items = relay;
        for i in direct {
            by_contact.entry(i.contact).or_default().push(i);
        }
    }
    let mut running = tokio::task::JoinSet::new();
    for (contact, mut items) in by_contact {
        items.sort_by_key(|i| i.position);
        let paths = paths.clone();
        running.spawn(async move {
            let acked = send_direct(&paths, &contact, &items).await;
            (items, acked)
        });
    }
    let mut direct: Vec<Deposit> = Vec::new();
    while let Some(joined) = running.join_next().await {
        let Ok((items, acked)) = joined else { continue };
        let (done, rest): (Vec<_>, Vec<_>) = items.into_iter().zip(acked).partition(|(_, ok)| *ok);
        // What the path did not ack goes through the relay in this round.
        for (i, _) in rest {
            plan.entry(i.relay_url.clone()).or_default().push(i);
        }
        let done: Vec<OutboxItem> = done.into_iter().map(|(i, _)| i).collect();
        if let Some(first) = done.first() {
            direct.push(Deposit {
                relay: first.relay_url.clone(),
                results: Ok(done.iter().map(|_| Some(Ok(Stored))).collect()),
                items: done,
            });
        }
    }
    plan.retain(|_, items| !items.is_empty());
    for items in plan.values_mut() {
        items.sort_by_key(|i| i.position);
    }
    let mut deposits = relay_deposit_all(dialer, plan).await;
    deposits.extend(direct);
    deposits
}

/// Hand `items` to `contact` over its path; one flag per item, true when
/// acked. If the path was replaced meanwhile (both sides dialed), what the
/// old one did not ack is tried once on the new one.
async fn send_direct(paths: &Paths, contact: &ContactId, items: &[OutboxItem]) -> Vec<bool> {
    let as_direct = |i: &OutboxItem| DirectItem {
        message_id: i.message_id,
        payload: i.payload.clone(),
        ephemeral: false,
    };
    let Some(path) = paths.get(contact) else {
        return vec![false; items.len()];
    };
    let batch: Vec<DirectItem> = items.iter().map(as_direct).collect();
    let mut acked = path.send_batch(&batch).await;
    if acked.iter().all(|a| *a) {
        return acked;
    }
    match paths.get(contact) {
        Some(now) if !std::sync::Arc::ptr_eq(&now, &path) => {
            let left: Vec<usize> = (0..items.len()).filter(|&i| !acked[i]).collect();
            let batch: Vec<DirectItem> = left.iter().map(|&i| as_direct(&items[i])).collect();
            for (i, ok) in left.into_iter().zip(now.send_batch(&batch).await) {
                acked[i] = ok;
            }
        }
        _ => {
            // A path that left items unacked is not trusted with more.
            path.conn.close(1u32.into(), b"unacked");
        }
    }
    acked
}

/// For a group message `now` (this round's targets of `item`): one flag
/// per target of `now`, true where the path acked it; empty when nothing
/// went direct. Only in a group of two: the message has one target left
/// in all and no member waiting for a card, and a path is open to that
/// target's member (whose mailbox it is).
pub(crate) async fn group_direct(
    paths: &Paths,
    item: &GroupOutboxItem,
    now: &GroupOutboxItem,
) -> Vec<bool> {
    let ([target], [_], []) = (
        now.targets.as_slice(),
        item.targets.as_slice(),
        item.pending.as_slice(),
    ) else {
        return Vec::new();
    };
    if paths.get(&target.member).is_none() {
        return Vec::new();
    }
    let one = OutboxItem {
        position: now.position,
        message_id: now.message_id,
        contact: target.member,
        message_key: None,
        relay_url: target.relay_url.clone(),
        mailbox_id: target.mailbox_id,
        token: target.token,
        payload: now.payload.clone(),
        copy: false,
    };
    send_direct(paths, &target.member, std::slice::from_ref(&one)).await
}
