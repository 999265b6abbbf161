//! Writes the seed corpora (`corpus/<target>/`) and the Olm fixture
//! (`fixtures/olm/`) that the fuzz targets start from. Run it again after a
//! change to the wire format, the pickle format or vodozemac:
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --example gen_corpus
//! ```
//!
//! The Olm fixture and seeds come from fresh random keys, so rerunning
//! replaces them all together; the olm_decrypt seeds only match the fixture
//! they were written with.

use std::fs;
use std::path::{Path, PathBuf};

use prost::Message;
use tern_crypto::{seal_with_ephemeral, DeviceAccount, OlmCiphertext, SealKey, StoreKey};
use tern_fuzz::{ACCOUNT_PICKLE_AAD, FIXTURE_SEAL_KEY, FIXTURE_STORE_KEY, SESSION_PICKLE_AAD};
use tern_protocol::encode_frame;
use tern_protocol::pb;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

fn seeds(target: &str, items: &[(&str, Vec<u8>)]) {
    let dir = root().join("corpus").join(target);
    let _ = fs::remove_dir_all(&dir);
    for (name, bytes) in items {
        write(&dir, name, bytes);
    }
}

fn address() -> pb::Address {
    pb::Address {
        relay_url: format!("tern://relay.example.org:4433?fp={}", "ab".repeat(32)),
        mailbox_id: vec![1; 16].into(),
        send_token: vec![2; 32].into(),
    }
}

fn error(code: pb::ErrorCode) -> pb::Error {
    pb::Error {
        code: code as i32,
        detail: "slow down".into(),
        retry_after_ms: 1500,
    }
}

fn main() {
    use pb::client_frame::Frame as C;
    use pb::control_request::Request as Q;
    use pb::control_response::Response as R;
    use pb::relay_frame::Frame as F;

    // --- protobuf requests and responses ---------------------------------
    let requests = [
        (
            "register",
            Q::Register(pb::Register {
                auth_key: vec![4; 32].into(),
            }),
        ),
        ("challenge", Q::Challenge(pb::ChallengeRequest {})),
        (
            "authenticate",
            Q::Authenticate(pb::Authenticate {
                mailbox_id: vec![1; 16].into(),
                nonce: vec![5; 32].into(),
                signature: vec![6; 64].into(),
            }),
        ),
        ("create_token", Q::CreateToken(pb::CreateToken {})),
        (
            "revoke_token",
            Q::RevokeToken(pb::RevokeToken {
                token: vec![2; 32].into(),
            }),
        ),
    ]
    .map(|(n, r)| (n, pb::ControlRequest { request: Some(r) }));
    seeds(
        "control_request",
        &requests.clone().map(|(n, m)| (n, m.encode_to_vec())),
    );

    let send = pb::ClientFrame {
        frame: Some(C::Send(pb::Send {
            request_id: 7,
            mailbox_id: vec![1; 16].into(),
            token: vec![2; 32].into(),
            message_id: vec![3; 16].into(),
            payload: b"sealed payload".to_vec().into(),
            ephemeral: true,
        })),
    };
    let client_frames = [
        ("send", send.clone()),
        (
            "ack",
            pb::ClientFrame {
                frame: Some(C::Ack(pb::Ack {
                    seqs: vec![1, 2, 300, u64::MAX],
                })),
            },
        ),
        (
            "subscribe",
            pb::ClientFrame {
                frame: Some(C::Subscribe(pb::Subscribe { window: 64 })),
            },
        ),
    ];
    seeds(
        "client_frame",
        &client_frames.clone().map(|(n, m)| (n, m.encode_to_vec())),
    );

    let relay_frames = [
        (
            "send_result_ok",
            F::SendResult(pb::SendResult {
                request_id: 7,
                seq: 42,
                duplicate: true,
                error: None,
            }),
        ),
        (
            "send_result_err",
            F::SendResult(pb::SendResult {
                request_id: 8,
                seq: 0,
                duplicate: false,
                error: Some(error(pb::ErrorCode::RateLimited)),
            }),
        ),
        (
            "envelope",
            F::Envelope(pb::Envelope {
                seq: 42,
                message_id: vec![3; 16].into(),
                received_at_ms: 1_700_000_000_000,
                payload: b"sealed payload".to_vec().into(),
                ephemeral: false,
            }),
        ),
        ("caught_up", F::CaughtUp(pb::CaughtUp {})),
        ("error", F::Error(error(pb::ErrorCode::QuotaExceeded))),
    ]
    .map(|(n, f)| (n, pb::RelayFrame { frame: Some(f) }));
    let control_responses = [
        (
            "resp_registered",
            R::Registered(pb::Registered {
                mailbox_id: vec![1; 16].into(),
            }),
        ),
        (
            "resp_challenge",
            R::Challenge(pb::Challenge {
                nonce: vec![5; 32].into(),
            }),
        ),
        (
            "resp_authenticated",
            R::Authenticated(pb::Authenticated {
                mailbox_id: vec![1; 16].into(),
                pending: 3,
            }),
        ),
        (
            "resp_token_created",
            R::TokenCreated(pb::TokenCreated {
                token: vec![2; 32].into(),
            }),
        ),
        ("resp_token_revoked", R::TokenRevoked(pb::TokenRevoked {})),
        ("resp_error", R::Error(error(pb::ErrorCode::TokenInvalid))),
    ]
    .map(|(n, r)| (n, pb::ControlResponse { response: Some(r) }.encode_to_vec()));
    let mut items: Vec<(&str, Vec<u8>)> = relay_frames
        .iter()
        .map(|(n, m)| (*n, m.encode_to_vec()))
        .collect();
    items.extend(control_responses.iter().cloned());
    seeds("relay_frame", &items);

    // --- frame decoder: [max/8, chunk-1, frames...] -----------------------
    let mut stream = Vec::new();
    for (_, m) in &requests[..2] {
        stream.extend_from_slice(&encode_frame(m));
    }
    let mut messages = encode_frame(&send).to_vec();
    messages.extend_from_slice(&encode_frame(&client_frames[1].1));
    messages.extend_from_slice(&encode_frame(&relay_frames[2].1));
    let with = |max: u8, chunk: u8, body: &[u8]| [&[max, chunk][..], body].concat();
    let mut truncated = encode_frame(&relay_frames[0].1).to_vec();
    truncated.truncate(truncated.len() - 2);
    seeds(
        "frame_decoder",
        &[
            ("control_frames", with(32, 255, &stream)),
            ("message_frames_chunked", with(64, 2, &messages)),
            ("empty_frame", with(1, 0, &[0, 0, 0, 0])),
            ("too_large", with(1, 255, &encode_frame(&send))),
            ("truncated", with(32, 3, &truncated)),
        ],
    );

    // --- device lists and link codes --------------------------------------
    {
        use prost::Message;
        let root = tern_crypto::RootKey::from_bytes(&[7; 32]);
        let entry = |n: u8| tern_client::devices::list::Device {
            id: [n; 8],
            identity_key: [n; 32],
            signing_key: [n; 32],
            seal_key: [n; 32],
            relay_url: address().relay_url,
            mailbox_id: [n; 16],
            token: Some([n; 32]),
            name: format!("device {n}"),
            added_at_ms: 1,
            fallback_key: [n; 32],
        };
        let list = tern_client::devices::list::sign_list(&root, 2, vec![entry(1), entry(2)]);
        let code = tern_protocol::link::encode_link_code(&pb::LinkCode {
            relay_url: address().relay_url,
            mailbox_id: vec![1; 16].into(),
            send_token: vec![2; 32].into(),
            secret: vec![3; 32].into(),
            identity_key: vec![4; 32].into(),
        });
        seeds(
            "device_list",
            &[
                ("signed_list", list.signed().encode_to_vec()),
                ("list", list.list.clone()),
                ("link_code", code.into_bytes()),
            ],
        );
    }

    // --- invite codes and relay URLs -------------------------------------
    let invite = pb::Invite {
        address: Some(address()),
        identity_key: vec![3; 32].into(),
        signing_key: vec![4; 32].into(),
        one_time_key: vec![5; 32].into(),
        name: "alice".into(),
        seal_key: vec![6; 32].into(),
        ..Default::default()
    };
    let mut v6 = invite.clone();
    if let Some(a) = v6.address.as_mut() {
        a.relay_url = format!("tern://[::1]:4433/?fp={}&x=1", "CD".repeat(32));
    }
    seeds(
        "invite_code",
        &[
            (
                "code",
                tern_protocol::invite::encode_invite(&invite).into_bytes(),
            ),
            (
                "code_v6",
                tern_protocol::invite::encode_invite(&v6).into_bytes(),
            ),
            ("invite_bytes", invite.encode_to_vec()),
            (
                "url_v4",
                format!("tern://127.0.0.1:4433?fp={}", "01".repeat(32)).into_bytes(),
            ),
            (
                "url_v6",
                format!("tern://[fe80::1]:1?a=b&fp={}", "ef".repeat(32)).into_bytes(),
            ),
        ],
    );

    // --- an Olm conversation: fixture and olm_decrypt seeds ----------------
    let store = StoreKey::from_bytes(FIXTURE_STORE_KEY);
    let alice = DeviceAccount::new();
    let mut bob = DeviceAccount::new();
    let otk = bob.new_one_time_key();
    let _spare = bob.new_one_time_key();
    let bob_account = bob.to_encrypted_pickle(&store);
    let mut alice_session = alice.start_session(&bob.identity_key(), &otk).unwrap();
    let m1 = alice_session.encrypt(b"hello bob");
    let m2 = alice_session.encrypt(b"still pre-key");
    let (mut bob_session, plain) = bob.accept_session(&alice.identity_key(), &m1.body).unwrap();
    assert_eq!(plain, b"hello bob");
    // Until Bob first encrypts, his sending ratchet is inactive (it holds
    // Alice's ratchet key); that pickle state is a seed of its own.
    let bob_inbound = bob_session.to_encrypted_pickle(&store);
    let r1 = bob_session.encrypt(b"hi alice");
    let r2 = bob_session.encrypt(b"second reply");
    assert_eq!(r1.olm_type, OlmCiphertext::NORMAL);
    let fixtures = root().join("fixtures/olm");
    write(&fixtures, "alice_identity.bin", &alice.identity_key());
    write(&fixtures, "bob_account.pickle", &bob_account);
    write(
        &fixtures,
        "bob_session.pickle",
        &bob_session.to_encrypted_pickle(&store),
    );
    write(
        &fixtures,
        "alice_session.pickle",
        &alice_session.to_encrypted_pickle(&store),
    );
    // After Alice reads a reply she sends normal messages (Bob's fixture
    // session can read the first of them).
    let mut alice_live = alice_session;
    assert_eq!(alice_live.decrypt(&r1).unwrap(), b"hi alice");
    let a1 = alice_live.encrypt(b"normal now");
    assert_eq!(a1.olm_type, OlmCiphertext::NORMAL);
    let olm = |c: &OlmCiphertext| [&[c.olm_type as u8][..], &c.body].concat();
    seeds(
        "olm_decrypt",
        &[
            ("prekey_first", olm(&m1)),
            ("prekey_second", olm(&m2)),
            ("reply_first", olm(&r1)),
            ("reply_second", olm(&r2)),
            ("alice_normal", olm(&a1)),
        ],
    );

    // --- peer content: Sealed and Content ---------------------------------
    let sealed = pb::Sealed {
        sender_identity_key: alice.identity_key().to_vec().into(),
        olm_type: m1.olm_type,
        olm_ciphertext: m1.body.clone().into(),
        padding: Default::default(),
    };
    let text = pb::Content {
        message_id: vec![3; 16].into(),
        sent_at_ms: 1_700_000_000_000,
        body: Some(pb::content::Body::Text(pb::Text {
            body: "hello 👋".into(),
        })),
    };
    let hello = pb::Content {
        message_id: vec![9; 16].into(),
        sent_at_ms: 1_700_000_000_001,
        body: Some(pb::content::Body::Hello(pb::ContactHello {
            name: "bob".into(),
            reply_to: Some(address()),
            signing_key: bob.signing_key().to_vec().into(),
            seal_key: bob.seal_public().to_vec().into(),
            invite_token: vec![2; 32].into(),
            ..Default::default()
        })),
    };
    seeds(
        "peer_content",
        &[
            ("sealed", sealed.encode_to_vec()),
            ("content_text", text.encode_to_vec()),
            ("content_hello", hello.encode_to_vec()),
        ],
    );

    // --- crypto facade: [mode, rest...] ------------------------------------
    let seal_key = SealKey::from_bytes(FIXTURE_SEAL_KEY);
    let mode = |m: u8, rest: &[u8]| [&[m][..], rest].concat();
    let aad = b"messages/1";
    let store_blob = [
        &[aad.len() as u8][..],
        aad,
        &store.encrypt(aad, b"stored message"),
    ]
    .concat();
    let account_json = store.decrypt(ACCOUNT_PICKLE_AAD, &bob_account).unwrap();
    let session_json = store
        .decrypt(SESSION_PICKLE_AAD, &bob_session.to_encrypted_pickle(&store))
        .unwrap();
    let sig = alice.sign(b"tern/1 auth challenge");
    let verify = [
        &alice.signing_key()[..],
        &[64],
        &sig,
        b"tern/1 auth challenge",
    ]
    .concat();
    seeds(
        "crypto_open",
        &[
            (
                "open_sealed",
                mode(
                    0,
                    &seal_with_ephemeral(&seal_key.public(), [9; 32], &olm(&m1)),
                ),
            ),
            ("store_decrypt", mode(1, &store_blob)),
            ("account_pickle", mode(2, &bob_account)),
            (
                "session_pickle",
                mode(3, &bob_session.to_encrypted_pickle(&store)),
            ),
            ("account_json", mode(4, &account_json)),
            ("session_json", mode(5, &session_json)),
            (
                "session_json_inbound",
                mode(5, &store.decrypt(SESSION_PICKLE_AAD, &bob_inbound).unwrap()),
            ),
            ("verify_signature", mode(6, &verify)),
            ("seal_round_trip", mode(7, b"attack at dawn")),
        ],
    );
    // A group update as a creator sends it: a signed create op, an add op,
    // and the creator's signed card; plus a receipt batch and a group
    // envelope's inner layer.
    {
        use tern_client::groups::state;
        let creator = DeviceAccount::new();
        let other = DeviceAccount::new();
        let me = state::Member {
            identity: creator.identity_key(),
            signing_key: creator.signing_key(),
            name: "ann".into(),
            admin: true,
        };
        let (id, create) = state::make_create(&me, "team", [5; 16], |m| creator.sign(m));
        let st = state::replay(&id, std::slice::from_ref(&create));
        let bob = state::Member {
            identity: other.identity_key(),
            signing_key: other.signing_key(),
            name: "bob".into(),
            admin: false,
        };
        let add = state::make_op(
            &id,
            &st,
            &creator.identity_key(),
            pb::GroupOpKind::GroupOpAdd,
            &bob,
            "",
            |m| creator.sign(m),
        );
        let card = state::sign_card(
            &pb::GroupMemberCard {
                group_id: id.to_vec().into(),
                identity_key: creator.identity_key().to_vec().into(),
                seal_key: vec![8; 32].into(),
                address: Some(address()),
                fallback_key: vec![9; 32].into(),
                version: 1,
                ..Default::default()
            },
            |m| creator.sign(m),
        );
        let update = pb::GroupUpdate {
            group_id: id.to_vec().into(),
            ops: vec![create, add],
            cards: vec![card],
        };
        let receipts = pb::ReceiptBatch {
            delivered: vec![vec![3; 16].into()],
            read: vec![vec![4; 16].into()],
        };
        let sealed = pb::GroupSealed {
            group_id: id.to_vec().into(),
            sender_identity_key: creator.identity_key().to_vec().into(),
            megolm_ciphertext: vec![6; 120].into(),
            padding: vec![0; 8].into(),
        };
        seeds(
            "group_update",
            &[
                ("update", update.encode_to_vec()),
                ("receipts", receipts.encode_to_vec()),
                ("group_sealed", sealed.encode_to_vec()),
            ],
        );
    }
    println!("wrote {}", root().display());
}
