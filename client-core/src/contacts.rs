//! Contacts: making an invite code, accepting one (which sends our
//! introduction, the contact hello, through the outbox), adding whoever
//! introduces themselves with a token we gave, and blocking.
//!
//! Invites are recorded ([`crate::invites`]) and their tokens come from the
//! pool minted ahead of need ([`crate::tokens`]); blocking revokes the
//! token the contact was bound to when its hello used our invite.
//!
//! Naming a new contact is a pure rule (`base_name`, `unique_name`) so
//! a hostile name cannot collide with or impersonate an existing contact.

use crate::client::{now_ms, random16, Client};
use crate::error::ClientError;
use crate::invites::{InviteRecord, DEFAULT_INVITE_TTL};
use crate::layers::{self, key32, Introduction};
use crate::store::Contact;
use tern_protocol::invite::{decode_invite, encode_invite, validate_address, InviteError};
use tern_protocol::pb::{self, content::Body};

/// The name a contact asked for, made printable: control characters
/// dropped, cut to the longest name an invite may carry, and "contact" if
/// nothing is left.
pub(crate) fn base_name(wanted: &str) -> String {
    let base: String = wanted
        .chars()
        .filter(|c| !c.is_control())
        .take(tern_protocol::invite::MAX_NAME_LEN)
        .collect();
    if base.trim().is_empty() {
        "contact".to_string()
    } else {
        base
    }
}

/// `base`, or `base-2`, `base-3`, … : the first one `taken` says is free.
pub(crate) fn unique_name(
    base: &str,
    mut taken: impl FnMut(&str) -> Result<bool, ClientError>,
) -> Result<String, ClientError> {
    let mut name = base.to_string();
    let mut n = 2;
    while taken(&name)? {
        name = format!("{base}-{n}");
        n += 1;
    }
    Ok(name)
}

impl Client {
    /// Make an invite code usable for [`DEFAULT_INVITE_TTL`]: a fresh send
    /// token and one-time key for whoever accepts it.
    pub async fn invite(&mut self) -> Result<String, ClientError> {
        Ok(self.invite_for(DEFAULT_INVITE_TTL).await?.0)
    }

    /// Make an invite code usable for `ttl`, and its record.
    pub async fn invite_for(
        &mut self,
        ttl: std::time::Duration,
    ) -> Result<(String, InviteRecord), ClientError> {
        let token = self.take_token().await?;
        let record = self.record_invite(token, now_ms(), ttl)?;
        let one_time_key = self.account.new_one_time_key();
        let own = self.own_devices()?;
        self.save_account()?;
        self.store.flush().await?;
        let code = encode_invite(&pb::Invite {
            root_key: own.list.root_key.to_vec().into(),
            device_list: Some(own.list.signed()),
            address: Some(self.my_address(&token)),
            identity_key: self.account.identity_key().to_vec().into(),
            signing_key: self.account.signing_key().to_vec().into(),
            one_time_key: one_time_key.to_vec().into(),
            name: self.profile.name.clone(),
            seal_key: self.account.seal_public().to_vec().into(),
        });
        Ok((code, record))
    }

    /// Accept an invite code, adding its maker as `name`. The maker learns
    /// of us from the hello this sends (now, or from the outbox later).
    pub async fn accept(&mut self, code: &str, name: &str) -> Result<Contact, ClientError> {
        let contact = self.accept_queued(code, name).await?;
        let _ = self.flush_outbox().await;
        Ok(contact)
    }

    /// [`Client::accept`] up to the outbox: the contact is stored and the
    /// hello is queued (durably), but nothing is sent yet.
    pub(crate) async fn accept_queued(
        &mut self,
        code: &str,
        name: &str,
    ) -> Result<Contact, ClientError> {
        let invite = decode_invite(code)?;
        let url = validate_address(invite.address.as_ref())?;
        let bad = |what| ClientError::Invite(InviteError::Field(what));
        let identity_key = key32(&invite.identity_key).ok_or(bad("identity key"))?;
        let one_time_key = key32(&invite.one_time_key).ok_or(bad("one-time key"))?;
        let signing_key = key32(&invite.signing_key).ok_or(bad("signing key"))?;
        let seal_key = key32(&invite.seal_key).ok_or(bad("seal key"))?;
        tern_crypto::validate_seal_public(&seal_key)?;
        if let Some(c) = self.store.contact(&identity_key)? {
            return Err(ClientError::ContactExists(c.name));
        }
        // An invite accepted under an existing contact's name, with another
        // identity key: that contact's keys change (crate::verify).
        let replaced = self.store.contact_named(name)?;
        // The inviter's account: a list signed by its root key that names
        // the device that made the invite (devices/list.rs).
        let peer_list = match &invite.device_list {
            Some(signed) => Some(crate::devices::list::accept_first(
                &invite.root_key,
                signed,
                &identity_key,
            )?),
            None => None,
        };
        let address = invite.address.unwrap_or_default();
        let send_token = key32(&address.send_token).ok_or(bad("send token"))?;
        let mailbox_id = address.mailbox_id[..]
            .try_into()
            .map_err(|_| bad("mailbox id"))?;
        let session = self.account.start_session(&identity_key, &one_time_key)?;

        let my_token = self.take_token().await?;

        let now = now_ms();
        let contact = Contact {
            name: name.to_string(),
            identity_key,
            signing_key,
            seal_key,
            relay_url: url.to_string(),
            mailbox_id,
            send_token,
            token_given: Some(my_token),
            added_at_ms: now,
        };
        self.store.put_contact(&contact)?;
        if let Some(list) = &peer_list {
            self.put_peer_list(&identity_key, list)?;
        }
        if let Some(old) = &replaced {
            self.change_contact_key(old, &contact)?;
        }
        let own = self.own_devices()?;
        let hello = Body::Hello(pb::ContactHello {
            root_key: own.list.root_key.to_vec().into(),
            device_list: Some(own.list.signed()),
            name: self.profile.name.clone(),
            reply_to: Some(self.my_address(&my_token)),
            signing_key: self.account.signing_key().to_vec().into(),
            seal_key: self.account.seal_public().to_vec().into(),
            invite_token: send_token.to_vec().into(),
        });
        let content = layers::content(random16(), now, hello);
        self.enqueue(&contact, session, &content, None)?;
        // Our other devices get the new contact too.
        self.sync_contact(&contact)?;
        self.store.flush().await?;
        Ok(contact)
    }

    /// Block a contact: nothing from them is shown any more, and the send
    /// token they really hold (the one of the invite their hello used, see
    /// [`crate::invites`]) is revoked at the relay.
    pub async fn block(&mut self, name: &str) -> Result<(), ClientError> {
        let contact = self.contact_named(name)?;
        let mut state = self.contact_state(&contact.identity_key)?;
        state.blocked = true;
        self.put_contact_state(&contact.identity_key, &state)?;
        self.store.flush().await?;
        let token = contact
            .token_given
            .ok_or_else(|| ClientError::Store(format!("no token on record for {name}")))?;
        let link = self.home_link().await?;
        self.dialer.spacing().note_auth();
        let mut revoked = link.revoke_token(&token).await;
        if revoked.is_ok() {
            // Tokens from before a rotation too (crate::rotation).
            revoked = self.revoke_retired_tokens(&link).await;
        }
        link.close();
        revoked
    }

    /// Our address on the home relay with `token` for writing to it.
    fn my_address(&self, token: &[u8; 32]) -> pb::Address {
        layers::address(&self.profile.relay_url, &self.profile.mailbox_id, token)
    }

    /// The contact an introduction makes, under a name no contact has yet.
    pub(crate) fn contact_from(
        &self,
        identity_key: [u8; 32],
        intro: Introduction,
        now_ms: u64,
    ) -> Result<Contact, ClientError> {
        let name = unique_name(&base_name(&intro.name), |n| {
            Ok(self.store.contact_named(n)?.is_some())
        })?;
        Ok(Contact {
            name,
            identity_key,
            signing_key: intro.signing_key,
            seal_key: intro.seal_key,
            relay_url: intro.relay_url,
            mailbox_id: intro.mailbox_id,
            send_token: intro.send_token,
            token_given: intro.token_given,
            added_at_ms: now_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_printable_bounded_and_never_empty() {
        assert_eq!(base_name("bob"), "bob");
        assert_eq!(base_name("b\u{7}o\nb"), "bob");
        assert_eq!(base_name("  "), "contact");
        assert_eq!(base_name("\u{1b}"), "contact");
        let long = "x".repeat(tern_protocol::invite::MAX_NAME_LEN + 10);
        assert_eq!(
            base_name(&long).chars().count(),
            tern_protocol::invite::MAX_NAME_LEN
        );
    }

    #[test]
    fn a_taken_name_gets_the_first_free_number() {
        let taken = ["bob", "bob-2", "bob-3"];
        let free = unique_name("bob", |n| Ok(taken.contains(&n))).unwrap();
        assert_eq!(free, "bob-4");
        assert_eq!(
            unique_name("ann", |n| Ok(taken.contains(&n))).unwrap(),
            "ann"
        );
    }
}
