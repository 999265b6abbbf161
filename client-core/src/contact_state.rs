//! What the user decided about a contact, and what happened to its keys:
//! verified (with the identity key that was verified), blocked, and a key
//! change not yet confirmed. Kept apart from [`crate::store::Contact`]
//! (`priv_contact_state`, sealed, keyed like the contact) so the contact
//! record itself keeps its shape.

use crate::client::Client;
use crate::error::ClientError;
use crate::store::ContactId;
use serde::{Deserialize, Serialize};

/// The tree of contact states.
const TREE: &str = "priv_contact_state";

/// A contact's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactState {
    /// The identity key the user verified, if they did.
    pub verified_key: Option<[u8; 32]>,
    /// The identity key the contact had before it changed, until the user
    /// confirms the new one.
    pub changed_from: Option<[u8; 32]>,
    /// Blocked: nothing from them is shown.
    pub blocked: bool,
    /// Tokens we gave them before a rotation, until they are revoked.
    #[serde(default)]
    pub retiring: Vec<crate::rotation::RetiringToken>,
    /// The account root key the user verified (the safety number covers
    /// it): a device list of the contact must be signed by it.
    #[serde(default)]
    pub verified_root: Option<[u8; 32]>,
}

impl ContactState {
    /// Verified, and the key verified is the one the contact has now.
    pub fn is_verified(&self, current: &[u8; 32]) -> bool {
        self.verified_key.as_ref() == Some(current)
    }

    /// Sends must stop: the contact was verified and its key changed since.
    pub fn sends_stopped(&self, current: &[u8; 32]) -> bool {
        self.verified_key.is_some() && !self.is_verified(current)
    }
}

impl Client {
    /// The state of the contact with identity key `id`.
    pub fn contact_state(&self, id: &ContactId) -> Result<ContactState, ClientError> {
        let tree = self.store.db().open_tree(TREE)?;
        let k = self.store.contact_key(id);
        match tree.get(k)? {
            Some(v) => self.store.open_record(TREE, &k, &v),
            None => Ok(ContactState::default()),
        }
    }

    /// Save the state of the contact with identity key `id`.
    pub(crate) fn put_contact_state(
        &self,
        id: &ContactId,
        state: &ContactState,
    ) -> Result<(), ClientError> {
        let tree = self.store.db().open_tree(TREE)?;
        let k = self.store.contact_key(id);
        tree.insert(k, self.store.seal_record(TREE, &k, state)?)?;
        Ok(())
    }

    /// Forget the state kept under `id` (the contact moved to a new key).
    pub(crate) fn remove_contact_state(&self, id: &ContactId) -> Result<(), ClientError> {
        let tree = self.store.db().open_tree(TREE)?;
        tree.remove(self.store.contact_key(id))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_stop_only_for_a_verified_contact_whose_key_changed() {
        let mut s = ContactState::default();
        assert!(!s.sends_stopped(&[1; 32]));
        s.verified_key = Some([1; 32]);
        assert!(s.is_verified(&[1; 32]));
        assert!(!s.sends_stopped(&[1; 32]));
        assert!(s.sends_stopped(&[2; 32]));
        assert!(!s.is_verified(&[2; 32]));
    }
}
