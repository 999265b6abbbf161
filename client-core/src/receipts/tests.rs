//! Receipts against a real store in a temp dir, with a client that never
//! connects (the relay trips are in tests/tests/receipts.rs).

use super::*;
use crate::store::Contact;

fn offline_client(dir: &std::path::Path) -> Client {
    Client::offline_for_tests(dir)
}

fn contact(name: &str, k: u8) -> Contact {
    Contact {
        name: name.into(),
        identity_key: [k; 32],
        signing_key: [k; 32],
        seal_key: [k; 32],
        relay_url: "r".into(),
        mailbox_id: [k; 16],
        send_token: [k; 32],
        token_given: None,
        added_at_ms: 0,
    }
}

fn batch(delivered: &[[u8; 16]], read: &[[u8; 16]]) -> pb::ReceiptBatch {
    pb::ReceiptBatch {
        delivered: delivered.iter().map(|i| i.to_vec().into()).collect(),
        read: read.iter().map(|i| i.to_vec().into()).collect(),
    }
}

fn state(c: &Client, id: &[u8; 16]) -> ReceiptState {
    c.message_status(&hex::encode(id)).unwrap().recipients[0].status
}

#[test]
fn the_recipients_receipts_move_the_status_and_strangers_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let ann = offline_client(dir.path());
    let (bob, carol) = (contact("bob", 2), contact("carol", 3));
    ann.store.put_contact(&bob).unwrap();
    ann.store.put_contact(&carol).unwrap();
    let id = [7; 16];
    ann.track_sent(&id, b"key", &[bob.identity_key]).unwrap();
    assert_eq!(state(&ann, &id), ReceiptState::Queued);
    ann.note_relay_answer(&id, &bob.identity_key, Ok(()))
        .unwrap();
    let report = ann.message_status(&hex::encode(id)).unwrap();
    assert_eq!(report.recipients[0].name, "bob");
    assert_eq!(report.recipients[0].status, ReceiptState::Sent);
    assert!(report.recipients[0].sent_at_ms.is_some());

    // Carol did not get it: her receipt changes nothing.
    assert_eq!(
        ann.apply_receipts(&carol.identity_key, &carol.name, &batch(&[id], &[id]))
            .unwrap(),
        None
    );
    assert_eq!(state(&ann, &id), ReceiptState::Sent);

    let got = ann
        .apply_receipts(&bob.identity_key, &bob.name, &batch(&[id], &[]))
        .unwrap();
    assert_eq!(
        got,
        Some(Event::Receipt {
            from: "bob".into(),
            delivered: vec![hex::encode(id)],
            read: vec![],
        })
    );
    assert_eq!(state(&ann, &id), ReceiptState::Delivered);
    // The same receipt again is no news.
    assert_eq!(
        ann.apply_receipts(&bob.identity_key, &bob.name, &batch(&[id], &[]))
            .unwrap(),
        None
    );
    let got = ann
        .apply_receipts(&bob.identity_key, &bob.name, &batch(&[], &[id]))
        .unwrap();
    assert_eq!(
        got,
        Some(Event::Receipt {
            from: "bob".into(),
            delivered: vec![],
            read: vec![hex::encode(id)],
        })
    );
    assert_eq!(state(&ann, &id), ReceiptState::Read);

    // A read receipt for a message not known delivered says both steps.
    let other = [9; 16];
    ann.track_sent(&other, b"key2", &[bob.identity_key])
        .unwrap();
    let got = ann
        .apply_receipts(&bob.identity_key, &bob.name, &batch(&[], &[other]))
        .unwrap();
    assert_eq!(
        got,
        Some(Event::Receipt {
            from: "bob".into(),
            delivered: vec![hex::encode(other)],
            read: vec![hex::encode(other)],
        })
    );
}

#[tokio::test]
async fn with_read_receipts_off_read_counts_as_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let ann = offline_client(dir.path());
    let bob = contact("bob", 2);
    ann.store.put_contact(&bob).unwrap();
    let id = [8; 16];
    ann.track_sent(&id, b"key", &[bob.identity_key]).unwrap();
    assert!(!ann.set_read_receipts(false).await.unwrap().read_receipts);
    let got = ann
        .apply_receipts(&bob.identity_key, &bob.name, &batch(&[], &[id]))
        .unwrap();
    assert_eq!(
        got,
        Some(Event::Receipt {
            from: "bob".into(),
            delivered: vec![hex::encode(id)],
            read: vec![],
        })
    );
    assert_eq!(state(&ann, &id), ReceiptState::Delivered);
    assert!(
        !ann.settings().unwrap().read_receipts,
        "the setting is kept"
    );
}

#[tokio::test]
async fn what_is_stored_is_owed_delivered_and_what_is_shown_read_once() {
    let dir = tempfile::tempdir().unwrap();
    let ann = offline_client(dir.path());
    let bob = [2; 32];
    let (a, b) = ([1; 16], [2; 16]);
    ann.note_stored(&bob, &a).unwrap();
    let pending = |id| ann.store.pending_receipt(id).unwrap();
    assert_eq!(
        pending(&a),
        Some(PendingReceipt {
            peer: bob,
            read: false
        })
    );
    // Shown: read now, found by its delivered receipt.
    assert!(ann.note_shown(&[(a, None)]).unwrap());
    assert_eq!(
        pending(&a),
        Some(PendingReceipt {
            peer: bob,
            read: true
        })
    );
    // Storing it again (a repeat) does not take the read back.
    ann.note_stored(&bob, &a).unwrap();
    assert_eq!(pending(&a).map(|p| p.read), Some(true));

    // Read receipts off: shown, but only the delivered receipt waits.
    ann.set_read_receipts(false).await.unwrap();
    ann.note_stored(&bob, &b).unwrap();
    ann.note_shown(&[(b, None)]).unwrap();
    assert_eq!(
        pending(&b),
        Some(PendingReceipt {
            peer: bob,
            read: false
        })
    );
    // And turning them on later does not send read for what was seen.
    ann.set_read_receipts(true).await.unwrap();
    ann.note_shown(&[(b, Some(bob))]).unwrap();
    assert_eq!(pending(&b).map(|p| p.read), Some(false));

    // A peer that is no longer a contact gets nothing: dropped, not kept.
    assert_eq!(ann.queue_receipts().unwrap(), 0);
    assert!(ann.store.pending_receipts().unwrap().is_empty());
    assert!(ann.store.outbox().unwrap().is_empty());
}

#[test]
fn status_of_an_unknown_id_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let ann = offline_client(dir.path());
    for id in ["zz", "00", &hex::encode([9; 16])] {
        assert!(matches!(
            ann.message_status(id),
            Err(ClientError::UnknownMessage(_))
        ));
    }
}

#[test]
fn a_message_read_on_another_of_our_devices_gets_no_read_receipt_from_this_one() {
    let dir = tempfile::tempdir().unwrap();
    let ann = offline_client(dir.path());
    let bob = [2; 32];
    let (synced, fresh) = ([5; 16], [6; 16]);
    // Our other device read `synced` first (its DeviceSync.read came in
    // before the message reached this device).
    ann.take_read_sync(&[synced]).unwrap();
    for id in [synced, fresh] {
        ann.note_stored(&bob, &id).unwrap();
    }
    ann.note_shown(&[(synced, Some(bob)), (fresh, Some(bob))])
        .unwrap();
    let pending = |id: &[u8; 16]| ann.store.pending_receipt(id).unwrap().map(|p| p.read);
    // Delivered is still owed from this device; read only for the one
    // read here first.
    assert_eq!(pending(&synced), Some(false));
    assert_eq!(pending(&fresh), Some(true));
    // And history here does not count it as read again.
    assert!(ann.store.was_shown(&synced).unwrap());
}
