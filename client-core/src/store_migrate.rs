//! Rewriting a store of the first layout into the current one, once, when
//! it is opened.
//!
//! The first layout keyed contacts and sessions by the contact's identity
//! key, conversation entries by contact, time and id, and received ids by
//! the id, all in the clear, and stored session pickles bound only to a
//! constant. The current layout ([`crate::store`]) keys them by keyed
//! hashes and binds each pickle to its contact and a counter. Everything is
//! read and re-sealed first, then written in one transaction with the new
//! layout's version, so a crash leaves either the old store or the new one.

use crate::error::ClientError;
use crate::store::{Contact, LocalStore, StoredMessage};
use sled::transaction::ConflictableTransactionError;
use sled::Transactional;
use std::collections::BTreeMap;

/// One tree's rewrite: keys to remove and (key, value) to insert.
#[derive(Default)]
struct Rewrite {
    remove: Vec<Vec<u8>>,
    insert: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Rewrite `store` from the first layout into the current one.
pub(crate) fn migrate(store: &LocalStore) -> Result<(), ClientError> {
    let [meta, contacts, sessions, messages, seen, heads] = store.trees();
    let mut c = Rewrite::default();
    for kv in contacts.iter() {
        let (k, v) = kv?;
        let contact: Contact = store.open_record("contacts", &k, &v)?;
        let slot = store.contact_key(&contact.identity_key);
        c.remove.push(k.to_vec());
        c.insert.push((
            slot.to_vec(),
            store.seal_record("contacts", &slot, &contact)?,
        ));
    }
    let mut s = Rewrite::default();
    let mut counters: BTreeMap<String, u64> = store.heads()?;
    for kv in sessions.iter() {
        let (k, v) = kv?;
        let id: [u8; 32] = k[..]
            .try_into()
            .map_err(|_| ClientError::Store("a session record has a bad key".into()))?;
        let slot = store.contact_key(&id);
        let counter = store.next_position()?;
        s.remove.push(k.to_vec());
        s.insert
            .push((slot.to_vec(), store.bind_pickle(&slot, counter, &v)));
        counters.insert(hex::encode(slot), counter);
    }
    let mut m = Rewrite::default();
    for kv in messages.iter() {
        let (k, v) = kv?;
        let entry: StoredMessage = store.open_record("messages", &k, &v)?;
        let slot = store.message_slot(&k);
        m.remove.push(k.to_vec());
        m.insert
            .push((slot.clone(), store.seal_record("messages", &slot, &entry)?));
    }
    let mut n = Rewrite::default();
    for kv in seen.iter() {
        let (k, _) = kv?;
        let id: [u8; 16] = match k[..].try_into() {
            Ok(id) => id,
            Err(_) => continue,
        };
        n.remove.push(k.to_vec());
        n.insert.push((
            store.store_key().keyed_hash("seen", &id).to_vec(),
            Vec::new(),
        ));
    }
    let sealed_heads = store.seal_record("priv_heads", b"sessions", &counters)?;
    (meta, contacts, sessions, messages, seen, heads)
        .transaction(|(meta, contacts, sessions, messages, seen, heads)| {
            for (tree, rw) in [(contacts, &c), (sessions, &s), (messages, &m), (seen, &n)] {
                for k in &rw.remove {
                    tree.remove(&k[..])?;
                }
                for (k, v) in &rw.insert {
                    tree.insert(&k[..], &v[..])?;
                }
            }
            heads.insert(&b"sessions"[..], &sealed_heads[..])?;
            meta.insert("priv_format", "2")?;
            Ok::<(), ConflictableTransactionError<ClientError>>(())
        })
        .map_err(|e| match e {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => e.into(),
        })?;
    store.db().flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{message_key, Status};
    use tern_crypto::StoreKey;

    fn contact() -> Contact {
        Contact {
            name: "carol-the-contact".into(),
            identity_key: [7; 32],
            signing_key: [2; 32],
            seal_key: [3; 32],
            relay_url: "r".into(),
            mailbox_id: [4; 16],
            send_token: [5; 32],
            token_given: None,
            added_at_ms: 1,
        }
    }

    /// A store of the first layout opens, shows the same data, and its
    /// files no longer hold the contact id or the message's time as keys.
    #[test]
    fn a_first_layout_store_is_rewritten_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let key = StoreKey::generate();
        let c = contact();
        let entry = StoredMessage {
            id: "00".repeat(16),
            contact: c.identity_key,
            outgoing: false,
            text: "hello".into(),
            sent_at_ms: 42,
            stored_at_ms: 43,
            status: Status::Received,
        };
        let mk = message_key(&c.identity_key, 42, &[0; 16]);
        {
            // Write the first layout by hand.
            let store = LocalStore::open(dir.path(), key.clone()).unwrap();
            let [meta, contacts, sessions, messages, seen, _] = store.trees();
            meta.remove("priv_format").unwrap();
            contacts
                .insert(
                    c.identity_key,
                    store.seal_record("contacts", &c.identity_key, &c).unwrap(),
                )
                .unwrap();
            sessions.insert(c.identity_key, &b"pickle"[..]).unwrap();
            messages
                .insert(&mk[..], store.seal_record("messages", &mk, &entry).unwrap())
                .unwrap();
            seen.insert([9u8; 16], &[][..]).unwrap();
            store.db().flush().unwrap();
        }
        let store = LocalStore::open_when_free(dir.path(), key.clone());
        assert_eq!(store.contact(&c.identity_key).unwrap(), Some(c.clone()));
        assert_eq!(store.history(&c.identity_key, 10).unwrap(), vec![entry]);
        assert_eq!(
            store.session(&c.identity_key).unwrap().as_deref(),
            Some(&b"pickle"[..])
        );
        assert!(store.seen(&[9; 16]).unwrap());
        let [_, contacts, sessions, messages, seen, _] = store.trees();
        for tree in [contacts, sessions, messages, seen] {
            for kv in tree.iter() {
                let (k, _) = kv.unwrap();
                assert!(!k.windows(32).any(|w| w == c.identity_key));
                assert!(!k.windows(16).any(|w| w == [9u8; 16]));
            }
        }
        // Opening again changes nothing.
        drop(store);
        let store = LocalStore::open_when_free(dir.path(), key);
        assert_eq!(store.contacts().unwrap().len(), 1);
    }

    /// A pickle moved to another contact, or an older pickle put back,
    /// does not load.
    #[test]
    fn pickles_cannot_be_swapped_or_rolled_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path(), StoreKey::generate()).unwrap();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let (sa, sb) = (store.contact_key(&a), store.contact_key(&b));
        let write = |slot: &[u8; 32], pickle: &[u8]| {
            let counter = store.next_position().unwrap();
            let [_, _, sessions, _, _, heads] = store.trees();
            sessions
                .insert(slot, store.bind_pickle(slot, counter, pickle))
                .unwrap();
            let mut h = store.heads().unwrap();
            h.insert(hex::encode(slot), counter);
            heads
                .insert(
                    "sessions",
                    store.seal_record("priv_heads", b"sessions", &h).unwrap(),
                )
                .unwrap();
        };
        write(&sa, b"a1");
        write(&sb, b"b1");
        let [_, _, sessions, _, _, _] = store.trees();
        let old_a = sessions.get(sa).unwrap().unwrap();
        write(&sa, b"a2");
        assert_eq!(store.session(&a).unwrap().as_deref(), Some(&b"a2"[..]));
        // Rolled back.
        sessions.insert(sa, old_a.clone()).unwrap();
        assert!(store.session(&a).is_err());
        // Swapped: b's place holds a's pickle.
        write(&sa, b"a3");
        let cur_a = sessions.get(sa).unwrap().unwrap();
        sessions.insert(sb, cur_a).unwrap();
        assert!(store.session(&b).is_err());
        assert_eq!(store.session(&a).unwrap().as_deref(), Some(&b"a3"[..]));
    }
}
