//! The device-list rules wired into a real store (temp dir, a client that
//! never connects): which devices of a contact may send, what a forged or
//! stale list changes (nothing), and where sends fan out to.

use super::list::{sign_list, Device};
use super::{Sender, Target};
use crate::client::Client;
use crate::store::Contact;
use tern_crypto::RootKey;

fn device(n: u8) -> Device {
    Device {
        id: [n; 8],
        identity_key: [n; 32],
        signing_key: [n; 32],
        seal_key: [n; 32],
        relay_url: format!("tern://127.0.0.1:4433?fp={}", "ab".repeat(32)),
        mailbox_id: [n; 16],
        token: Some([n; 32]),
        name: format!("d{n}"),
        added_at_ms: 1,
        fallback_key: [n; 32],
    }
}

fn bob() -> Contact {
    Contact {
        name: "bob".into(),
        identity_key: [1; 32],
        signing_key: [1; 32],
        seal_key: [1; 32],
        relay_url: "r".into(),
        mailbox_id: [1; 16],
        send_token: [9; 32],
        token_given: Some([8; 32]),
        added_at_ms: 0,
    }
}

fn kind(s: Sender) -> &'static str {
    match s {
        Sender::Contact(_) => "contact",
        Sender::ContactDevice(_) => "contact device",
        Sender::OwnDevice => "own device",
        Sender::Refused => "refused",
        Sender::Unknown => "unknown",
    }
}

fn targets(ts: Vec<Target>) -> Vec<([u8; 32], [u8; 32])> {
    ts.into_iter().map(|t| (t.identity_key, t.token)).collect()
}

#[test]
fn only_devices_on_a_list_signed_by_the_pinned_root_may_send() {
    let dir = tempfile::tempdir().unwrap();
    let mut ann = Client::offline_for_tests(dir.path());
    ann.own_devices().unwrap();
    let bob = bob();
    ann.store.put_contact(&bob).unwrap();
    // Before any list: the device we met only.
    assert_eq!(kind(ann.resolve_sender(&[1; 32]).unwrap()), "contact");
    assert_eq!(kind(ann.resolve_sender(&[2; 32]).unwrap()), "unknown");
    assert_eq!(
        targets(ann.contact_targets(&bob).unwrap()),
        [([1; 32], [9; 32])]
    );

    // Bob's first list, from the device we met: pinned.
    let root = RootKey::generate();
    let v1 = sign_list(&root, 1, vec![device(1), device(2)]);
    ann.apply_peer_list(&bob, &[1; 32], &v1.signed()).unwrap();
    assert_eq!(
        kind(ann.resolve_sender(&[2; 32]).unwrap()),
        "contact device"
    );
    // The device we met through its per-contact token, the other through
    // the list's shared one.
    assert_eq!(
        targets(ann.contact_targets(&bob).unwrap()),
        [([1; 32], [9; 32]), ([2; 32], [2; 32])]
    );

    // A list signed by another root, naming a rogue device: ignored.
    let rogue = RootKey::generate();
    let forged = sign_list(&rogue, 5, vec![device(1), device(2), device(6)]);
    ann.apply_peer_list(&bob, &[1; 32], &forged.signed())
        .unwrap();
    assert_eq!(kind(ann.resolve_sender(&[6; 32]).unwrap()), "unknown");
    assert_eq!(ann.contact_targets(&bob).unwrap().len(), 2);

    // An older or equal version: ignored too.
    let stale = sign_list(&root, 1, vec![device(1), device(7)]);
    ann.apply_peer_list(&bob, &[2; 32], &stale.signed())
        .unwrap();
    assert_eq!(kind(ann.resolve_sender(&[7; 32]).unwrap()), "unknown");

    // Bob removes device 2 (from device 2 even): it is refused from now
    // on, and gets nothing.
    let v2 = sign_list(&root, 2, vec![device(1), device(3)]);
    ann.apply_peer_list(&bob, &[2; 32], &v2.signed()).unwrap();
    assert_eq!(kind(ann.resolve_sender(&[2; 32]).unwrap()), "unknown");
    assert_eq!(
        kind(ann.resolve_sender(&[3; 32]).unwrap()),
        "contact device"
    );
    assert_eq!(
        targets(ann.contact_targets(&bob).unwrap()),
        [([1; 32], [9; 32]), ([3; 32], [3; 32])]
    );
    // A list without the device we met: that device is refused as well.
    let v3 = sign_list(&root, 3, vec![device(3)]);
    ann.apply_peer_list(&bob, &[3; 32], &v3.signed()).unwrap();
    assert_eq!(kind(ann.resolve_sender(&[1; 32]).unwrap()), "refused");
    assert_eq!(
        targets(ann.contact_targets(&bob).unwrap()),
        [([3; 32], [3; 32])]
    );
}

#[test]
fn a_first_list_counts_only_from_the_device_we_met() {
    let dir = tempfile::tempdir().unwrap();
    let mut ann = Client::offline_for_tests(dir.path());
    let bob = bob();
    ann.store.put_contact(&bob).unwrap();
    let root = RootKey::generate();
    // Sent by a device that is not the one we met: not pinned.
    let l = sign_list(&root, 1, vec![device(1), device(4)]);
    ann.apply_peer_list(&bob, &[4; 32], &l.signed()).unwrap();
    assert!(ann.peer_list(&bob.identity_key).unwrap().is_none());
    // A first list that leaves out the device we met: not pinned either.
    let l = sign_list(&root, 1, vec![device(4)]);
    ann.apply_peer_list(&bob, &[1; 32], &l.signed()).unwrap();
    assert!(ann.peer_list(&bob.identity_key).unwrap().is_none());
}

#[test]
fn an_account_from_before_device_lists_gets_a_root_and_a_list_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut ann = Client::offline_for_tests(dir.path());
    // (The offline client's relay URL does not parse; a real one does.)
    ann.profile.relay_url = format!("tern://127.0.0.1:4433?fp={}", "ab".repeat(32));
    assert!(ann.load_own().unwrap().is_none());
    let own = ann.own_devices().unwrap();
    assert_eq!(own.list.version, 1);
    assert_eq!(own.list.devices.len(), 1);
    assert_eq!(own.list.devices[0].identity_key, ann.account.identity_key());
    assert!(super::list::verify_list(&own.root().public(), &own.list.signed()).is_ok());
    // The same record afterwards; no own device to copy to.
    assert_eq!(ann.own_devices().unwrap().list, own.list);
    assert!(ann.own_targets().unwrap().is_empty());
    assert_eq!(ann.devices().unwrap().len(), 1);
}

#[test]
fn a_contacts_first_list_is_answered_with_ours_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut ann = Client::offline_for_tests(dir.path());
    ann.profile.relay_url = format!("tern://127.0.0.1:4433?fp={}", "ab".repeat(32));
    ann.own_devices().unwrap();
    // Bob's real device keys (a session can start from its fallback key).
    let mut phone = tern_crypto::DeviceAccount::new();
    let mut met = device(1);
    met.identity_key = phone.identity_key();
    met.seal_key = phone.seal_public();
    met.fallback_key = phone.group_fallback_key();
    let mut bob = bob();
    bob.identity_key = met.identity_key;
    bob.seal_key = met.seal_key;
    ann.store.put_contact(&bob).unwrap();
    let root = RootKey::generate();
    let v1 = sign_list(&root, 1, vec![met.clone()]);
    ann.apply_peer_list(&bob, &met.identity_key, &v1.signed())
        .unwrap();
    let out = ann.store.outbox().unwrap();
    assert_eq!(out.len(), 1, "our list goes to bob's device");
    assert_eq!(out[0].contact, met.identity_key);
    assert!(ann.group_news, "and is flushed soon");
    // A later list is not answered again.
    let v2 = sign_list(&root, 2, vec![met]);
    ann.apply_peer_list(&bob, &bob.identity_key.clone(), &v2.signed())
        .unwrap();
    assert_eq!(ann.store.outbox().unwrap().len(), 1);
}

#[tokio::test]
async fn the_safety_number_covers_the_root_keys_and_a_verified_root_holds() {
    let dir = tempfile::tempdir().unwrap();
    let mut ann = Client::offline_for_tests(dir.path());
    ann.profile.relay_url = format!("tern://127.0.0.1:4433?fp={}", "ab".repeat(32));
    let own = ann.own_devices().unwrap();
    let bob = bob();
    ann.store.put_contact(&bob).unwrap();
    // No list from Bob yet: the identity keys, as before device lists.
    assert_eq!(
        ann.safety_number("bob").unwrap(),
        tern_crypto::safety::safety_number(&ann.account.identity_key(), &bob.identity_key)
    );
    let root = RootKey::generate();
    let v1 = sign_list(&root, 1, vec![device(1)]);
    ann.apply_peer_list(&bob, &[1; 32], &v1.signed()).unwrap();
    let by_roots = tern_crypto::safety::safety_number(&own.root().public(), &root.public());
    assert_eq!(ann.safety_number("bob").unwrap(), by_roots);
    // Bob links a device: a new list under the same root, same number.
    let v2 = sign_list(&root, 2, vec![device(1), device(2)]);
    ann.apply_peer_list(&bob, &[1; 32], &v2.signed()).unwrap();
    assert_eq!(
        ann.peer_list(&bob.identity_key).unwrap().unwrap().version,
        2
    );
    assert_eq!(ann.safety_number("bob").unwrap(), by_roots);
    ann.set_verified("bob", true).await.unwrap();
    assert_eq!(
        ann.contact_state(&bob.identity_key).unwrap().verified_root,
        Some(root.public())
    );

    // A list under another root key is refused, even as a first list (the
    // held one lost, as for a contact copied without its list).
    let other = RootKey::generate();
    let forged = sign_list(&other, 9, vec![device(1), device(5)]);
    ann.apply_peer_list(&bob, &[1; 32], &forged.signed())
        .unwrap();
    assert_eq!(
        ann.peer_list(&bob.identity_key).unwrap().unwrap().version,
        2
    );
    ann.store.tree(super::PEERS_TREE).unwrap().clear().unwrap();
    ann.apply_peer_list(&bob, &[1; 32], &forged.signed())
        .unwrap();
    assert!(ann.peer_list(&bob.identity_key).unwrap().is_none());
    assert_eq!(kind(ann.resolve_sender(&[5; 32]).unwrap()), "unknown");
}
