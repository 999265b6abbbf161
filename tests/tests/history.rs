//! Opt-in history and account backups as a user sees them, with the real
//! `tern` binary and real relays (`tern-relay run` children; Alice and Bob
//! on different relays): `--remote` pages newest first, `--restore` brings
//! the conversation back onto a fresh home of the same account (made from
//! a backup) once only, a backup restores on a fresh home and the contact
//! can still message it, the relay's files never hold history plaintext,
//! and turning history off (beside a running `tern listen`) leaves no blob
//! on the relay. Over QUIC in-process: another account can neither read
//! nor delete an account's blobs, and group messages go to history and
//! restore onto a new device with the one-to-one ones.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tern_client::ClientError;
use tern_crypto::{DeviceAccount, HistoryKey};
use tern_protocol::history::history_signed_bytes;
use tern_protocol::pb::{self, control_request::Request, control_response::Response};
use tern_protocol::ErrorCode;
use tern_tests::listen::Listen;
use tern_tests::process::{alice_and_bob, json_lines, ok, run_bounded, tern_cmd, RelayProcess};
use tern_tests::{befriend, connect, disk_contains, TestRelay, TestUser};

/// How long a listening client or the relay may take to show something.
const DEADLINE: Duration = Duration::from_secs(30);

/// Alice on one relay, Bob on another, contacts of each other.
fn contacts(dir: &Path, ra: &RelayProcess, rb: &RelayProcess) -> (PathBuf, PathBuf) {
    let (a, b) = alice_and_bob(dir, ra.url(), rb.url());
    assert!(ok(&a, &["recv", "--json"]).contains("\"contact\""));
    (a, b)
}

/// `tern history CONTACT [ARGS] --json`: (text, sent_at) per message.
fn history(home: &Path, contact: &str, args: &[&str]) -> Vec<(String, String)> {
    let mut all = vec!["history", contact, "--json"];
    all.extend_from_slice(args);
    json_lines(&ok(home, &all))
        .iter()
        .map(|m| {
            (
                m["text"].as_str().unwrap().to_string(),
                m["sent_at"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The messages among `tern recv --json` lines.
fn messages_in(out: &str) -> Vec<Value> {
    json_lines(out)
        .into_iter()
        .filter(|l| l["type"] == "message")
        .collect()
}

fn texts(messages: &[(String, String)]) -> Vec<&str> {
    messages.iter().map(|(t, _)| t.as_str()).collect()
}

/// `tern backup export FILE`: the recovery phrase it printed.
fn export(home: &Path, file: &Path) -> String {
    let out = ok(home, &["backup", "export", file.to_str().unwrap()]);
    out.lines()
        .find_map(|l| l.strip_prefix("recovery phrase: "))
        .unwrap_or_else(|| panic!("no phrase in {out:?}"))
        .to_string()
}

#[test]
fn remote_history_pages_restores_once_and_a_backup_brings_the_account_back() {
    let dir = tempfile::tempdir().unwrap();
    let (ra, rb) = (RelayProcess::start(), RelayProcess::start());
    let (a, b) = contacts(dir.path(), &ra, &rb);
    assert_eq!(ok(&a, &["settings", "history", "30"]), "history 30 days\n");
    assert_eq!(ok(&a, &["settings", "history"]), "history 30 days\n");
    // A backup with contacts and the history key, before any message.
    let early = dir.path().join("early.tern");
    let early_phrase = export(&a, &early);

    for i in 0..2 {
        ok(&b, &["send", "alice", &format!("hist-secret-b{i}")]);
    }
    assert_eq!(messages_in(&ok(&a, &["recv", "--json"])).len(), 2);
    for i in 0..5 {
        ok(&a, &["send", "bob", &format!("hist-secret-a{i}")]);
    }
    assert_eq!(messages_in(&ok(&b, &["recv", "--json"])).len(), 5);
    let all = [
        "hist-secret-b0",
        "hist-secret-b1",
        "hist-secret-a0",
        "hist-secret-a1",
        "hist-secret-a2",
        "hist-secret-a3",
        "hist-secret-a4",
    ];

    // --remote pages newest first (each page printed oldest first, as
    // `history` prints).
    assert_eq!(
        texts(&history(&a, "bob", &["--remote", "--limit", "100"])),
        all
    );
    let page1 = history(&a, "bob", &["--remote", "--limit", "3"]);
    assert_eq!(texts(&page1), &all[4..]);
    let page2 = history(
        &a,
        "bob",
        &["--remote", "--limit", "3", "--before", &page1[0].1],
    );
    assert_eq!(texts(&page2), &all[1..4]);
    let page3 = history(
        &a,
        "bob",
        &["--remote", "--limit", "3", "--before", &page2[0].1],
    );
    assert_eq!(texts(&page3), &all[..1]);
    // The default page is 20.
    assert_eq!(history(&a, "bob", &["--remote"]).len(), 7);

    // The relays' files hold blobs, never the plaintext.
    assert!(ra.data_dir().join("history").is_dir());
    for r in [&ra, &rb] {
        assert!(!disk_contains(r.data_dir(), b"hist-secret"));
    }

    // --restore onto a fresh home of the same account (from the early
    // backup, phrase from the environment): the conversation comes back,
    // once.
    let c = dir.path().join("alice-restored");
    let out = run_bounded(
        tern_cmd(&c, &["init", "--restore", early.to_str().unwrap()])
            .env("TERN_RECOVERY_PHRASE", &early_phrase),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(history(&c, "bob", &[]).is_empty());
    let out = run_bounded(&mut tern_cmd(&c, &["history", "--restore"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "restored 7 message(s) (7 in history, 1 conversation(s))\n"
    );
    // Not a terminal: plain progress lines.
    assert!(String::from_utf8_lossy(&out.stderr).contains("restore: 1/1 conversations, 7 messages"));
    assert_eq!(
        ok(&c, &["history", "--restore"]),
        "restored 0 message(s) (7 in history, 1 conversation(s))\n"
    );
    assert_eq!(texts(&history(&c, "bob", &[])), all);

    // A backup made now restores on a fresh home with the local history,
    // and the contact can still message it.
    let late = dir.path().join("late.tern");
    let phrase = export(&a, &late);
    let wrong = tern_cmd(
        &dir.path().join("x"),
        &[
            "init",
            "--restore",
            late.to_str().unwrap(),
            "--phrase",
            &early_phrase,
        ],
    )
    .output()
    .unwrap();
    assert!(!wrong.status.success());
    let d = dir.path().join("alice-new-machine");
    ok(
        &d,
        &[
            "init",
            "--restore",
            late.to_str().unwrap(),
            "--phrase",
            &phrase,
        ],
    );
    assert_eq!(texts(&history(&d, "bob", &[])), all);
    ok(&b, &["send", "alice", "after the move"]);
    let got = messages_in(&ok(&d, &["recv", "--json"]));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["from"], "bob");
    assert_eq!(got[0]["text"], "after the move");
    let file = std::fs::read(&late).unwrap();
    assert!(!file.windows(11).any(|w| w == b"hist-secret"));
}

#[test]
fn turning_history_off_beside_listen_leaves_no_blob_on_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ra, rb) = (RelayProcess::start(), RelayProcess::start());
    let (a, b) = contacts(dir.path(), &ra, &rb);
    let listen = Listen::start(&a);
    // Every command goes through the listen's socket.
    assert_eq!(ok(&a, &["settings", "history", "7"]), "history 7 days\n");
    for i in 0..3 {
        ok(&a, &["send", "bob", &format!("off-secret-{i}")]);
    }
    ok(&b, &["send", "alice", "off-secret-reply"]);
    // The listen uploads as it stores; wait until the relay has all four.
    let deadline = Instant::now() + DEADLINE;
    while history(&a, "bob", &["--remote"]).len() < 4 {
        assert!(Instant::now() < deadline, "history never reached the relay");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = ok(&a, &["settings", "history", "0"]);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("history off"));
    let deleted = lines.next().unwrap();
    assert!(
        deleted.starts_with("deleted ") && !deleted.starts_with("deleted 0 "),
        "{out}"
    );
    assert!(history(&a, "bob", &["--remote"]).is_empty());
    // Off, nothing new goes up.
    ok(&a, &["send", "bob", "off-secret-later"]);
    listen.interrupt();
    assert!(history(&a, "bob", &["--remote"]).is_empty());
    assert!(!disk_contains(ra.data_dir(), b"off-secret"));
    // The relay's own count, read from its files once it has stopped.
    assert!(ra.terminate().success());
    let store = tern_relay::history::SledHistory::open(&ra.data_dir().join("history")).unwrap();
    assert_eq!(store.blobs_held().unwrap(), 0);
}

/// Sign `req` as the holder of `signer`, claiming `account`.
fn signed(
    link_exporter: &[u8; 32],
    signer: &HistoryKey,
    account: [u8; 32],
    req: Request,
) -> Request {
    let auth = |sig: Vec<u8>| {
        Some(pb::HistoryAuth {
            account_key: account.to_vec().into(),
            signature: sig.into(),
        })
    };
    let with = |mut req: Request, sig: Vec<u8>| {
        match &mut req {
            Request::HistoryPage(r) => r.auth = auth(sig),
            Request::HistoryDelete(r) => r.auth = auth(sig),
            _ => unreachable!(),
        }
        req
    };
    let unsigned = pb::ControlRequest {
        request: Some(with(req.clone(), Vec::new())),
    };
    let sig = signer.sign(&history_signed_bytes(link_exporter, &unsigned).unwrap());
    with(req, sig.to_vec())
}

#[tokio::test]
async fn another_account_can_neither_read_nor_delete_blobs() {
    let relay = TestRelay::start().await;
    let mut alice = TestUser::new(&relay, "alice").await;
    let mut bob = TestUser::new(&relay, "bob").await;
    befriend(&mut alice, &mut bob).await;
    alice.client.set_history_days(30).await.unwrap();
    alice.send("bob", "alice's own").await;
    assert!(alice.client.upload_history().await.unwrap() >= 1);
    let key = HistoryKey::from_bytes(alice.client.history_key_bundle().unwrap());
    let bob_id = alice.client.contacts().unwrap()[0].identity_key;
    let tag = key.tag("pair", &bob_id);
    let page = || {
        Request::HistoryPage(pb::HistoryPage {
            auth: None,
            tag: tag.to_vec().into(),
            before_ms: 0,
            cursor: Default::default(),
            limit: 10,
        })
    };
    let delete = || Request::HistoryDelete(pb::HistoryDelete { auth: None });

    // Eve: her own mailbox and connection, her own history key.
    let (_dialer, link) = connect(relay.url()).await;
    let device = DeviceAccount::new();
    let mailbox = link.register(device.signing_key()).await.unwrap();
    link.authenticate(&mailbox, |m| device.sign(m))
        .await
        .unwrap();
    let exporter = link.exporter().unwrap();
    let eve = HistoryKey::generate();
    for req in [page(), delete()] {
        let forged = signed(&exporter, &eve, key.account_id(), req);
        match link.control(forged).await {
            Err(ClientError::Refused(e)) => assert_eq!(e.code, ErrorCode::HistoryAuthFailed),
            other => panic!("forged request answered {other:?}"),
        }
    }
    // Under her own account, Alice's tag holds nothing.
    match link
        .control(signed(&exporter, &eve, eve.account_id(), page()))
        .await
        .unwrap()
    {
        Response::HistoryBlobs(b) => assert!(b.blobs.is_empty()),
        other => panic!("{other:?}"),
    }
    // Deleting her own account leaves Alice's blobs.
    match link
        .control(signed(&exporter, &eve, eve.account_id(), delete()))
        .await
        .unwrap()
    {
        Response::HistoryDeleted(d) => assert_eq!(d.blobs, 0),
        other => panic!("{other:?}"),
    }
    let still = alice.client.remote_history("bob", None, 10).await.unwrap();
    assert_eq!(still.len(), 1);
    assert_eq!(still[0].text, "alice's own");
}

#[tokio::test]
async fn group_messages_go_to_history_and_restore_onto_a_new_device() {
    let relay = TestRelay::start().await;
    let mut alice = TestUser::new(&relay, "alice").await;
    let mut bob = TestUser::new(&relay, "bob").await;
    befriend(&mut alice, &mut bob).await;
    alice.client.set_history_days(30).await.unwrap();
    alice
        .client
        .group_call(tern_client::GroupCall::Create {
            name: "team".into(),
            contacts: vec!["bob".into()],
        })
        .await
        .unwrap();
    // The new device is made from a backup that knows the group.
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("alice.tern");
    let phrase = alice.client.export_backup(&backup).await.unwrap();
    for text in ["group history one", "group history two"] {
        alice
            .client
            .group_call(tern_client::GroupCall::Send {
                name: "team".into(),
                text: text.into(),
            })
            .await
            .unwrap();
    }
    alice.send("bob", "pairwise too").await;
    assert_eq!(alice.client.upload_history().await.unwrap(), 3);

    let file = std::fs::read(&backup).unwrap();
    let mut device =
        tern_client::Client::restore_backup(&dir.path().join("new"), &file, &phrase, None)
            .await
            .unwrap();
    assert!(device.group_history("team", 10).unwrap().is_empty());
    let mut seen = Vec::new();
    let done = device.restore_history(&mut |p| seen.push(p)).await.unwrap();
    assert_eq!((done.conversations, done.restored), (2, 3));
    assert_eq!(seen.last().map(|p| p.conversations_done), Some(2));
    let group: Vec<String> = device
        .group_history("team", 10)
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(group, ["group history one", "group history two"]);
    assert_eq!(device.history("bob", 10).unwrap()[0].text, "pairwise too");
}
