//! Several devices per account, with the real `tern` binary and real relays
//! (`tern-relay run` children): a linked device (on another relay) receives
//! what contacts send, what either device sends shows on the other as sent
//! by us, both sides of a link print the same check code, and a removed
//! device gets nothing new while what it still sends is dropped, read
//! state and receipts reach every device, the safety number stays when a
//! device is linked, and linking works beside a running `tern listen`. In
//! process, with the library: a device no list of the account names is
//! dropped by the contact.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use tern_tests::linking::{link, listen, Lines};
use tern_tests::process::{alice_and_bob, json_lines, ok, received, RelayProcess};

/// Alice on relay `ra`, Bob on `rb`, contacts of each other.
fn contacts(dir: &Path, ra: &RelayProcess, rb: &RelayProcess) -> (PathBuf, PathBuf) {
    let (a, b) = alice_and_bob(dir, ra.url(), rb.url());
    assert!(ok(&a, &["recv", "--json"]).contains("\"contact\""));
    (a, b)
}

fn history(home: &Path, contact: &str) -> Vec<Value> {
    json_lines(&ok(home, &["history", contact, "--json"]))
}

#[test]
fn a_linked_device_receives_and_both_show_what_either_sent() {
    let (ra, rb) = (RelayProcess::start(), RelayProcess::start());
    let dir = tempfile::tempdir().unwrap();
    let (a1, b) = contacts(dir.path(), &ra, &rb);
    // The safety number covers the accounts' root keys.
    let safety = ok(&a1, &["verify", "bob"]);
    assert_eq!(ok(&b, &["verify", "alice"]), safety);
    let a2 = dir.path().join("alice-laptop");
    let id = link(&a1, &a2, &rb, "laptop");

    // Both devices are on the list, on either of them.
    for home in [&a1, &a2] {
        let list = json_lines(&ok(home, &["device", "list", "--json"]));
        assert_eq!(list.len(), 2, "{list:?}");
        assert!(list
            .iter()
            .any(|d| d["id"] == id.as_str() && d["name"] == "laptop"));
        assert_eq!(list.iter().filter(|d| d["this_device"] == true).count(), 1);
    }
    // The new device has the contacts.
    assert!(ok(&a2, &["contacts"]).contains("bob"));

    // Bob learns the new list (nothing to show), then writes once: both
    // of Alice's devices get it.
    assert!(received(&b).is_empty());
    ok(&b, &["send", "alice", "to both of you"]);
    for home in [&a1, &a2] {
        assert_eq!(received(home), [("bob".into(), "to both of you".into())]);
    }
    // Linking changed no safety number: the same on both of Alice's
    // devices and on Bob's, as before.
    assert_eq!(ok(&a2, &["verify", "bob"]), safety);
    assert_eq!(ok(&a1, &["verify", "bob"]), safety);
    assert_eq!(ok(&b, &["verify", "alice"]), safety);

    // What the laptop sends reaches Bob and shows on the first device as
    // sent by Alice; and the other way round.
    let sent: Value =
        serde_json::from_str(ok(&a2, &["send", "bob", "from the laptop", "--json"]).trim())
            .unwrap();
    ok(&a1, &["send", "bob", "from the phone"]);
    let got = received(&b);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.contains(&("alice".into(), "from the laptop".into())));
    assert!(got.contains(&("alice".into(), "from the phone".into())));
    assert!(received(&a1).is_empty() && received(&a2).is_empty());
    // Bob's receipts reach the device that sent the message.
    let status = json_lines(&ok(
        &a2,
        &["status", sent["id"].as_str().unwrap(), "--json"],
    ));
    assert_eq!(status[0]["status"], "read", "{status:?}");
    for (home, other) in [(&a1, "from the laptop"), (&a2, "from the phone")] {
        let h = history(home, "bob");
        let copy = h
            .iter()
            .find(|m| m["text"] == other)
            .unwrap_or_else(|| panic!("{other:?} missing from {h:?}"));
        assert_eq!(copy["outgoing"], true, "{copy}");
        assert_eq!(copy["from"], "alice", "{copy}");
        assert!(h
            .iter()
            .any(|m| m["text"] == "to both of you" && m["outgoing"] == false));
    }
}

#[test]
fn what_one_device_read_is_read_on_the_other_and_receipts_reach_both() {
    let (ra, rb) = (RelayProcess::start(), RelayProcess::start());
    let dir = tempfile::tempdir().unwrap();
    let (a1, b) = contacts(dir.path(), &ra, &rb);
    let a2 = dir.path().join("alice-laptop");
    link(&a1, &a2, &rb, "laptop");
    assert!(received(&b).is_empty());
    ok(&b, &["send", "alice", "read me once"]);

    // The phone shows it: read there. The laptop gets the message and the
    // phone's read state together, and shows it as read already (so it
    // sends no read receipt of its own).
    let at_phone = json_lines(&ok(&a1, &["recv", "--json"]));
    let m = at_phone
        .iter()
        .find(|e| e["text"] == "read me once")
        .unwrap();
    assert!(m.get("read").is_none(), "{m}");
    let at_laptop = json_lines(&ok(&a2, &["recv", "--json"]));
    let m = at_laptop
        .iter()
        .find(|e| e["text"] == "read me once")
        .unwrap_or_else(|| panic!("{at_laptop:?}"));
    assert_eq!(m["read"], true, "{m}");

    // The laptop writes; Bob reads it; the phone, which did not send it,
    // has its status from Bob's receipts too.
    let sent: Value =
        serde_json::from_str(ok(&a2, &["send", "bob", "from the laptop", "--json"]).trim())
            .unwrap();
    let id = sent["id"].as_str().unwrap();
    assert_eq!(received(&b), [("alice".into(), "from the laptop".into())]);
    for home in [&a1, &a2] {
        assert!(received(home).is_empty());
        let status = json_lines(&ok(home, &["status", id, "--json"]));
        assert_eq!(status[0]["status"], "read", "{home:?}: {status:?}");
    }
}

#[test]
fn a_device_links_beside_a_running_listen() {
    let (ra, rb) = (RelayProcess::start(), RelayProcess::start());
    let dir = tempfile::tempdir().unwrap();
    let (a1, b) = contacts(dir.path(), &ra, &rb);
    // `tern device link` goes through the running client, which keeps the
    // store; the wait for the new device and the check code are the
    // command's own.
    let running = listen(&a1);
    let a2 = dir.path().join("alice-laptop");
    let id = link(&a1, &a2, &rb, "laptop");
    let list = json_lines(&ok(&a1, &["device", "list", "--json"]));
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(list.iter().any(|d| d["id"] == id.as_str()));
    running.interrupt();
    assert!(ok(&a2, &["contacts"]).contains("bob"));

    // Bob takes the new list, then reaches both devices.
    assert!(received(&b).is_empty());
    ok(&b, &["send", "alice", "to both of you"]);
    for home in [&a1, &a2] {
        assert_eq!(received(home), [("bob".into(), "to both of you".into())]);
    }
}

#[test]
fn a_removed_device_gets_nothing_new_and_what_it_sends_is_dropped() {
    let (ra, rb) = (RelayProcess::start(), RelayProcess::start());
    let dir = tempfile::tempdir().unwrap();
    let (a1, b) = contacts(dir.path(), &ra, &rb);
    let a2 = dir.path().join("alice-laptop");
    let id = link(&a1, &a2, &ra, "laptop");
    assert!(received(&b).is_empty());
    ok(&b, &["send", "alice", "before"]);
    assert_eq!(received(&a2), [("bob".into(), "before".into())]);
    assert_eq!(received(&a1), [("bob".into(), "before".into())]);

    // Renaming and removing go through a running `tern listen`.
    let listen = listen(&a1);
    let renamed = ok(&a1, &["device", "rename", &id[..6], "old laptop"]);
    assert!(renamed.contains("renamed"), "{renamed}");
    assert!(ok(&a1, &["device", "list"]).contains("old laptop"));
    ok(&a1, &["device", "remove", &id]);
    let left = json_lines(&ok(&a1, &["device", "list", "--json"]));
    assert_eq!(left.len(), 1, "{left:?}");
    // This device cannot remove itself.
    let me = left[0]["id"].as_str().unwrap().to_string();
    assert!(!tern_tests::process::tern(&a1, &["device", "remove", &me])
        .status
        .success());
    listen.interrupt();

    // Bob takes the new list, then writes: only the first device gets it.
    assert!(received(&b).is_empty());
    ok(&b, &["send", "alice", "after"]);
    assert_eq!(received(&a1), [("bob".into(), "after".into())]);
    assert!(received(&a2).is_empty(), "the removed device got something");
    // Nor do the first device's own sends reach it.
    ok(&a1, &["send", "bob", "phone only"]);
    assert_eq!(received(&b), [("alice".into(), "phone only".into())]);
    assert!(received(&a2).is_empty());
    assert!(!history(&a2, "bob")
        .iter()
        .any(|m| m["text"] == "phone only"));
    // What the removed device still sends, Bob drops.
    let _ = tern_tests::process::tern(&a2, &["send", "bob", "from a removed device"]);
    assert!(
        received(&b).is_empty(),
        "bob showed a removed device's text"
    );
}

#[test]
fn a_link_code_is_refused_when_damaged_and_without_a_terminal_needs_yes() {
    let ra = RelayProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let a1 = dir.path().join("alice");
    ok(&a1, &["init", "--relay", ra.url(), "--name", "alice"]);
    let bad = tern_tests::process::tern(
        &dir.path().join("new"),
        &["init", "--link", "ternlink1AAAA", "--yes"],
    );
    assert!(!bad.status.success());
    assert!(!dir.path().join("new").join("store.key").exists());

    // Without --yes and without a terminal, the new device refuses and
    // keeps nothing; the offer times out.
    let mut offer = Lines::spawn(&a1, &["device", "link", "--timeout", "5"]);
    let code = offer.next_line();
    let new = dir.path().join("new2");
    let out = tern_tests::process::tern(&new, &["init", "--link", &code]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    assert!(!new.join("store.key").exists());
    let status = offer.child.wait().unwrap();
    assert!(!status.success(), "the offer should not link anything");
    assert_eq!(json_lines(&ok(&a1, &["device", "list", "--json"])).len(), 1);
}

/// A device that no list signed by Alice's root key names, made with the
/// library: it writes to Bob as "Alice's new device", with a list signed
/// by a root key of its own. Bob shows nothing and still hears Alice.
#[tokio::test]
async fn a_contact_drops_a_device_its_account_never_listed() {
    use prost::Message;
    use tern_client::layers;
    use tern_client::transport::Outgoing;
    use tern_protocol::pb::{self, content::Body};
    use tern_tests::{befriend, connect, messages, texts, TestRelay, TestUser};

    let relay = TestRelay::start().await;
    let mut alice = TestUser::new(&relay, "alice").await;
    let mut bob = TestUser::new(&relay, "bob").await;
    befriend(&mut alice, &mut bob).await;

    // What a stranger can learn of Bob: an invite of his (address, seal
    // key, signed list with his fallback key).
    let invite = tern_protocol::invite::decode_invite(&bob.client.invite().await.unwrap()).unwrap();
    let list = pb::DeviceList::decode(&invite.device_list.unwrap().list[..]).unwrap();
    let bob_device = &list.devices[0];
    let key = |b: &[u8]| <[u8; 32]>::try_from(b).unwrap();
    let address = invite.address.unwrap();

    // The rogue device and a list of "Alice's" devices it signed itself.
    let mut rogue = tern_crypto::DeviceAccount::new();
    let rogue_root = tern_crypto::RootKey::generate();
    let forged = pb::DeviceList {
        root_key: rogue_root.public().to_vec().into(),
        version: 99,
        devices: vec![pb::DeviceEntry {
            device_id: vec![7; 8].into(),
            identity_key: rogue.identity_key().to_vec().into(),
            signing_key: rogue.signing_key().to_vec().into(),
            seal_key: rogue.seal_public().to_vec().into(),
            address: Some(address.clone()),
            name: "alice's new phone".into(),
            added_at_ms: 1,
            fallback_key: rogue.group_fallback_key().to_vec().into(),
        }],
    }
    .encode_to_vec();
    let mut signed_msg = b"tern/1 device list".to_vec();
    signed_msg.extend_from_slice(&forged);
    let update = Body::DeviceListUpdate(pb::DeviceListUpdate {
        list: Some(pb::DeviceSignedList {
            list: forged.into(),
            signature: rogue_root.sign(&signed_msg).to_vec().into(),
        }),
    });
    let mut session = rogue
        .start_session(
            &key(&bob_device.identity_key),
            &key(&bob_device.fallback_key),
        )
        .unwrap();
    let mut outgoing = Vec::new();
    for body in [update, layers::text_body("it's me, alice, on a new phone")] {
        let content = layers::content(tern_client::random16(), tern_client::now_ms(), body);
        outgoing.push(Outgoing {
            mailbox: address.mailbox_id[..].try_into().unwrap(),
            token: key(&address.send_token),
            message_id: content.message_id[..].try_into().unwrap(),
            payload: layers::seal_content(
                &mut session,
                &rogue.identity_key(),
                &key(&invite.seal_key),
                &content,
            ),
        });
    }
    let (_dialer, link) = connect(relay.url()).await;
    let mut stream = link.messages().await.unwrap();
    for r in stream.send_all(&outgoing).await.unwrap() {
        r.expect("the relay takes the rogue's envelopes (it cannot tell)");
    }

    // Bob opens both and shows nothing; Alice still reaches him, and he
    // has one contact.
    let shown = bob.receive_rest().await;
    assert!(messages(&shown).is_empty(), "{shown:?}");
    alice.send("bob", "the real alice").await;
    assert_eq!(texts(&bob.receive_messages(1).await), ["the real alice"]);
    assert_eq!(bob.client.contacts().unwrap().len(), 1);
}

#[test]
fn a_device_linked_with_history_on_restores_the_conversations() {
    let (ra, rb) = (RelayProcess::start(), RelayProcess::start());
    let dir = tempfile::tempdir().unwrap();
    let (a1, b) = contacts(dir.path(), &ra, &rb);
    ok(&a1, &["settings", "history", "30"]);
    ok(&b, &["send", "alice", "before the laptop"]);
    assert_eq!(received(&a1), [("bob".into(), "before the laptop".into())]);
    ok(&a1, &["send", "bob", "my answer"]);

    // The laptop joins on the same home relay, where the account's
    // history is: linking hands over the history key and restores.
    let a2 = dir.path().join("alice-laptop");
    link(&a1, &a2, &ra, "laptop");
    let h = history(&a2, "bob");
    let texts: Vec<(&str, bool)> = h
        .iter()
        .map(|m| (m["text"].as_str().unwrap(), m["outgoing"] == true))
        .collect();
    assert!(texts.contains(&("before the laptop", false)), "{h:?}");
    assert!(texts.contains(&("my answer", true)), "{h:?}");
    assert_eq!(
        ok(&a2, &["settings", "history"]).trim(),
        ok(&a1, &["settings", "history"]).trim()
    );
}
