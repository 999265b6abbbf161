//! The membership commands: create, add, remove, leave. Each makes one
//! signed op ([`super::state`]), stores it, and sends the group's whole
//! state to the members (and to a removed member, so it learns it), then
//! delivers the outbox.

use super::state::{self, Member};
use super::GroupRecord;
use crate::client::{random16, Client};
use crate::error::ClientError;
use crate::event::OutboxReport;
use tern_protocol::pb::{content::Body, GroupOpKind};

impl Client {
    /// Create a group named `name` with the contacts named in `contacts`;
    /// we are its first admin. Returns what the outbox flush said.
    pub async fn group_create(
        &mut self,
        name: &str,
        contacts: &[String],
    ) -> Result<OutboxReport, ClientError> {
        self.queue_create(name, contacts).await?;
        self.flush_outbox().await
    }

    /// Create the group and queue what tells its members (on disk, not yet
    /// delivered). Only our card's send token needs the home relay now.
    pub(crate) async fn queue_create(
        &mut self,
        name: &str,
        contacts: &[String],
    ) -> Result<(), ClientError> {
        if self
            .group_named(name)
            .is_ok_and(|r| self.group_state(&r).is_member(&self.account.identity_key()))
        {
            return Err(ClientError::GroupRefused(format!(
                "a group named {name:?} exists already"
            )));
        }
        let mut adds = Vec::new();
        for c in contacts {
            let c = self.contact_named(c)?;
            adds.push(Member {
                identity: c.identity_key,
                signing_key: c.signing_key,
                name: c.name,
                admin: false,
            });
        }
        let me = self.me_member(true);
        let (id, create) = state::make_create(&me, name, random16(), |m| self.account.sign(m));
        let mut ops = vec![create];
        for m in &adds {
            let st = state::replay(&id, &ops);
            ops.push(state::make_op(
                &id,
                &st,
                &me.identity,
                GroupOpKind::GroupOpAdd,
                m,
                "",
                |x| self.account.sign(x),
            ));
        }
        let mut r = GroupRecord::empty(id);
        r.set_ops(&ops);
        // Our own card needs a token from the home relay.
        r.card_wanted = true;
        self.put_group(&r)?;
        self.publish_group_cards().await?;
        Ok(())
    }

    /// Add the contact `contact` to group `name` (as an admin if `admin`).
    pub async fn group_add(
        &mut self,
        name: &str,
        contact: &str,
        admin: bool,
    ) -> Result<OutboxReport, ClientError> {
        self.queue_add(name, contact, admin)?;
        self.deliver().await
    }

    /// [`Client::group_add`] without delivering: the update waits in the
    /// outbox.
    pub(crate) fn queue_add(
        &mut self,
        name: &str,
        contact: &str,
        admin: bool,
    ) -> Result<(), ClientError> {
        let c = self.contact_named(contact)?;
        let target = Member {
            identity: c.identity_key,
            signing_key: c.signing_key,
            name: c.name,
            admin,
        };
        self.queue_change(name, GroupOpKind::GroupOpAdd, target, &[])
    }

    /// Remove the member `who` (a contact name, or a member's name in the
    /// group) from group `name`.
    pub async fn group_remove(
        &mut self,
        name: &str,
        who: &str,
    ) -> Result<OutboxReport, ClientError> {
        self.queue_remove(name, who)?;
        self.deliver().await
    }

    /// [`Client::group_remove`] without delivering.
    pub(crate) fn queue_remove(&mut self, name: &str, who: &str) -> Result<(), ClientError> {
        let r = self.group_named(name)?;
        let st = self.group_state(&r);
        let mut target = None;
        for (id, m) in &st.members {
            if self.member_name(&st, id)? == who {
                target = Some(m.clone());
            }
        }
        let target = target.ok_or_else(|| {
            ClientError::GroupRefused(format!("{who:?} is not a member of {name:?}"))
        })?;
        let removed = [target.identity];
        self.queue_change(name, GroupOpKind::GroupOpRemove, target, &removed)
    }

    /// Leave group `name`.
    pub async fn group_leave(&mut self, name: &str) -> Result<OutboxReport, ClientError> {
        self.queue_leave(name)?;
        self.deliver().await
    }

    /// [`Client::group_leave`] without delivering.
    pub(crate) fn queue_leave(&mut self, name: &str) -> Result<(), ClientError> {
        let me = self.me_member(false);
        self.queue_change(name, GroupOpKind::GroupOpRemove, me, &[])
    }

    /// Make what was queued durable, then deliver the outbox.
    async fn deliver(&mut self) -> Result<OutboxReport, ClientError> {
        self.store.flush().await?;
        self.flush_outbox().await
    }

    /// This device as a group member.
    fn me_member(&self, admin: bool) -> Member {
        Member {
            identity: self.account.identity_key(),
            signing_key: self.account.signing_key(),
            name: self.profile.name.clone(),
            admin,
        }
    }

    /// Make one op, store it, and queue the news for the members (and
    /// `also`).
    fn queue_change(
        &mut self,
        name: &str,
        kind: GroupOpKind,
        target: Member,
        also: &[[u8; 32]],
    ) -> Result<(), ClientError> {
        let mut r = self.group_named(name)?;
        let me = self.account.identity_key();
        let st = self.group_state(&r);
        let leaving = kind == GroupOpKind::GroupOpRemove && target.identity == me;
        if !st.is_member(&me) {
            return Err(ClientError::GroupRefused(format!(
                "you are not a member of {name:?}"
            )));
        }
        if !leaving && !st.is_admin(&me) {
            return Err(ClientError::GroupRefused(format!(
                "only admins of {name:?} may add or remove members"
            )));
        }
        // Before the change: a leaver tells the members it is leaving.
        let before: Vec<[u8; 32]> = st.members.keys().copied().collect();
        // Addresses as they were: a removed member is reached with them.
        let before_change = r.clone();
        let mut ops = r.ops();
        ops.push(state::make_op(&r.id, &st, &me, kind, &target, "", |m| {
            self.account.sign(m)
        }));
        r.set_ops(&ops);
        self.put_group(&r)?;
        let also: &[[u8; 32]] = if leaving { &before } else { also };
        self.broadcast_update(&r, None)?;
        let st = self.group_state(&r);
        for id in also {
            if id != &me && !st.is_member(id) {
                for u in r.updates() {
                    self.send_control(&before_change, id, Body::GroupUpdate(u))?;
                }
            }
        }
        Ok(())
    }
}
