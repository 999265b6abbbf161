//! Who may become a contact and what the user can trust about them:
//! hellos only through an outstanding invite of ours, invites that expire
//! and can be revoked, blocking that hides a contact and revokes the token
//! they really hold, and key changes that stop sends to a verified contact.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use prost::Message;
use std::time::Duration;
use tern_client::invites::InviteState;
use tern_client::{ClientError, Event};
use tern_crypto::DeviceAccount;
use tern_protocol::pb::{self, content::Body};
use tern_protocol::STREAM_MESSAGES;
use tern_tests::{
    befriend, connect, disk_contains, invite_address, messages, now_ms, random16, send_frame,
    texts, RawStream, TestRelay, TestUser,
};

/// `n` random bytes: a payload whose presence on the relay's disk tells
/// whether it was stored.
fn random_bytes(n: usize) -> Vec<u8> {
    (0..n).map(|_| rand::random::<u8>()).collect()
}

/// A sealed hello from a new device accepting `code`, giving `reply_to`
/// as its address: what a client (or someone who saw the invite) sends.
fn hello(code: &str, name: &str, reply_to: pb::Address) -> Vec<u8> {
    let invite = tern_protocol::invite::decode_invite(code).unwrap();
    let key = |b: &[u8]| -> [u8; 32] { b.try_into().unwrap() };
    let device = DeviceAccount::new();
    let mut session = device
        .start_session(&key(&invite.identity_key), &key(&invite.one_time_key))
        .unwrap();
    let content = pb::Content {
        message_id: random16().to_vec().into(),
        sent_at_ms: now_ms(),
        body: Some(Body::Hello(pb::ContactHello {
            name: name.into(),
            reply_to: Some(reply_to),
            signing_key: device.signing_key().to_vec().into(),
            seal_key: device.seal_public().to_vec().into(),
            invite_token: invite.address.unwrap().send_token,
            ..Default::default()
        })),
    };
    let olm = session.encrypt(&content.encode_to_vec());
    let mut sealed = pb::Sealed {
        sender_identity_key: device.identity_key().to_vec().into(),
        olm_type: olm.olm_type,
        olm_ciphertext: olm.body.into(),
        padding: Default::default(),
    };
    tern_client::layers::pad(&mut sealed);
    tern_crypto::seal(&key(&invite.seal_key), &sealed.encode_to_vec())
}

fn address(relay: &TestRelay) -> pb::Address {
    tern_client::layers::address(&relay.url().to_string(), &random16(), &[9; 32])
}

/// Deposit `payload` with the invite's own mailbox and token; the relay's
/// answer (an error code if refused).
async fn deposit(relay: &TestRelay, code: &str, payload: &[u8]) -> Option<pb::Error> {
    let (mailbox, token) = invite_address(code);
    deposit_with(relay, &mailbox, &token, payload).await
}

/// Deposit `payload` in `mailbox` with `token`; the relay's refusal, if any.
async fn deposit_with(
    relay: &TestRelay,
    mailbox: &[u8; 16],
    token: &[u8; 32],
    payload: &[u8],
) -> Option<pb::Error> {
    let (_dialer, link) = connect(relay.url()).await;
    let mut stream = RawStream::open(&link, STREAM_MESSAGES).await;
    let r = stream
        .send(&send_frame(1, mailbox, token, &random16(), payload))
        .await;
    link.close();
    r.error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_outstanding_invite_makes_a_contact() {
    let relay = TestRelay::start().await;
    let mut bob = TestUser::new(&relay, "bob").await;

    // Expired: its hello is dropped, though the relay still took it (its
    // token is revoked at the next chance, below).
    let (expired, record) = bob
        .client
        .invite_for(Duration::from_millis(1))
        .await
        .unwrap();
    while now_ms() < record.expires_at_ms {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        deposit(&relay, &expired, &hello(&expired, "late", address(&relay))).await,
        None
    );
    // Revoked: its token is revoked at the relay too.
    let (revoked, record) = bob
        .client
        .invite_for(Duration::from_secs(60))
        .await
        .unwrap();
    bob.client.revoke_invite(&record.id).await.unwrap();
    // The relay answers a revoked token as any other (blocking is
    // invisible) but drops the envelope: after the answer, which waits for
    // the same durable write as a stored send, its bytes are on no disk.
    let gone = hello(&revoked, "gone", address(&relay));
    assert_eq!(deposit(&relay, &revoked, &gone).await, None);
    assert!(
        !disk_contains(relay.data_dir(), &gone[..64]),
        "the relay kept an envelope sent with a revoked invite's token"
    );

    // Used once: a second hello with the same invite is dropped.
    let good = bob.client.invite().await.unwrap();
    assert_eq!(
        deposit(&relay, &good, &hello(&good, "first", address(&relay))).await,
        None
    );
    assert_eq!(
        deposit(&relay, &good, &hello(&good, "second", address(&relay))).await,
        None
    );

    let events = bob
        .receive_until("the first hello", |e| {
            e.contains(&Event::ContactAdded {
                name: "first".into(),
            })
        })
        .await;
    assert_eq!(
        events,
        [Event::ContactAdded {
            name: "first".into()
        }]
    );
    assert!(bob.receive_rest().await.is_empty());
    let names: Vec<String> = bob
        .client
        .contacts()
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["first"]);

    // The records say so, and the expired invite's token was revoked at the
    // relay when Bob next authenticated (to receive).
    let now = now_ms();
    let states: Vec<(InviteState, bool)> = bob
        .client
        .invites()
        .unwrap()
        .iter()
        .map(|r| (r.state(now), r.token_revoked))
        .collect();
    assert_eq!(
        states,
        [
            (InviteState::Expired, true),
            (InviteState::Revoked, true),
            (InviteState::Used, false),
        ]
    );
    let later = hello(&expired, "later", address(&relay));
    assert_eq!(deposit(&relay, &expired, &later).await, None);
    assert!(
        !disk_contains(relay.data_dir(), &later[..64]),
        "the expired invite's token still works"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_contact_is_never_shown_and_others_are_unaffected() {
    let relay = TestRelay::start().await;
    let mut alice = TestUser::new(&relay, "alice").await;
    let mut bob = TestUser::new(&relay, "bob").await;
    let mut carol = TestUser::new(&relay, "carol").await;
    befriend(&mut alice, &mut bob).await;
    befriend(&mut alice, &mut carol).await;

    // The token Bob holds is the one of the invite his hello used.
    let bob_contact = alice
        .client
        .contacts()
        .unwrap()
        .into_iter()
        .find(|c| c.name == "bob")
        .unwrap();
    let record = alice
        .client
        .invites()
        .unwrap()
        .into_iter()
        .find(|r| r.used_by == Some(bob_contact.identity_key))
        .unwrap();
    assert_eq!(bob_contact.token_given, Some(record.token));

    // Sent before the block, read after it: not shown either.
    bob.send("alice", "before the block").await;
    alice.client.block("bob").await.unwrap();
    // After the block: whatever the relay answers Bob, Alice never sees it.
    let _ = bob.client.send_text("alice", "after the block").await;
    carol.send("alice", "from carol").await;
    let got = alice.receive_messages(1).await;
    assert_eq!(texts(&got), ["from carol"]);
    let rest = messages(&alice.receive_rest().await);
    assert!(rest.is_empty(), "{rest:?}");
    assert!(alice.client.history("bob", 10).unwrap().is_empty());
    // Alice still reaches Carol, and Carol her.
    alice.send("carol", "still here").await;
    assert_eq!(texts(&carol.receive_messages(1).await), ["still here"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_change_is_shown_and_stops_sends_to_a_verified_contact() {
    let relay = TestRelay::start().await;
    let mut alice = TestUser::new(&relay, "alice").await;
    let mut bob = TestUser::new(&relay, "bob").await;
    befriend(&mut alice, &mut bob).await;
    // Both sides compute the same safety number.
    let number = alice.client.safety_number("bob").unwrap();
    assert_eq!(number, bob.client.safety_number("alice").unwrap());
    assert_eq!(number.len(), 60);
    alice.client.set_verified("bob", true).await.unwrap();
    bob.send("alice", "before the change").await;
    assert_eq!(
        texts(&alice.receive_messages(1).await),
        ["before the change"]
    );

    // A new device gives Bob's address in a hello (through a fresh invite of
    // Alice's): Bob's key changed, or someone is in the middle.
    let code = alice.client.invite().await.unwrap();
    let bob_address = {
        let c = alice
            .client
            .contacts()
            .unwrap()
            .into_iter()
            .find(|c| c.name == "bob")
            .unwrap();
        tern_client::layers::address(&c.relay_url, &c.mailbox_id, &c.send_token)
    };
    assert_eq!(
        deposit(&relay, &code, &hello(&code, "bob", bob_address)).await,
        None
    );
    let changed = Event::KeyChanged {
        name: "bob".into(),
        verified: true,
    };
    let events = alice
        .receive_until("the key change", |e| e.contains(&changed))
        .await;
    assert_eq!(events, [changed]);
    assert_eq!(alice.client.contacts().unwrap().len(), 1);
    assert_ne!(number, alice.client.safety_number("bob").unwrap());
    // The conversation stays with the contact.
    let history = alice.client.history("bob", 10).unwrap();
    assert_eq!(
        history.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        ["before the change"]
    );

    let refused = alice.client.send_text("bob", "to the new key").await;
    assert!(
        matches!(refused, Err(ClientError::KeyChanged(ref n)) if n == "bob"),
        "{refused:?}"
    );
    alice.client.confirm_key("bob").await.unwrap();
    // Sends go out again (to Bob's mailbox, with the new key).
    let (_, outcome) = alice
        .client
        .send_text("bob", "to the new key")
        .await
        .unwrap();
    assert_eq!(outcome, tern_client::SendOutcome::Sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_rotates_through_the_end_to_end_channel_and_the_old_one_is_retired() {
    let relay = TestRelay::start().await;
    let mut alice = TestUser::new(&relay, "alice").await;
    let mut bob = TestUser::new(&relay, "bob").await;
    befriend(&mut alice, &mut bob).await;
    let old = alice.client.invites().unwrap()[0].token;
    let alice_at_bob = |bob: &TestUser| {
        bob.client
            .contacts()
            .unwrap()
            .into_iter()
            .find(|c| c.name == "alice")
            .unwrap()
    };
    assert_eq!(alice_at_bob(&bob).send_token, old);

    let report = alice
        .client
        .rotate_token_with("bob", Duration::from_millis(1))
        .await
        .unwrap();
    assert_eq!(report.sent.len(), 1, "{report:?}");
    let new = alice
        .client
        .contacts()
        .unwrap()
        .into_iter()
        .find(|c| c.name == "bob")
        .unwrap()
        .token_given
        .unwrap();
    assert_ne!(new, old);
    // Bob takes the new token; nothing is shown to him.
    let deadline = std::time::Instant::now() + tern_tests::DEADLINE;
    while alice_at_bob(&bob).send_token != new {
        assert!(bob.receive_rest().await.is_empty());
        assert!(
            std::time::Instant::now() < deadline,
            "bob never took the new token"
        );
    }
    bob.send("alice", "with the new token").await;
    // Alice's receive is a chance to retire the old token (its grace is over).
    assert_eq!(
        texts(&alice.receive_messages(1).await),
        ["with the new token"]
    );
    let with_old = random_bytes(256);
    assert_eq!(
        deposit_with(&relay, &alice.mailbox(), &old, &with_old).await,
        None,
        "a retired token is answered as any other"
    );
    assert!(
        !disk_contains(relay.data_dir(), &with_old[..64]),
        "the old token still works"
    );
    assert_eq!(
        deposit_with(&relay, &alice.mailbox(), &new, &[0; 256]).await,
        None
    );
}
