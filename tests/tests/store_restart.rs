//! A relay whose store holds hundreds of segments starts, serves, is
//! killed with SIGKILL and starts again under an open-file limit far below
//! its segment count (`prlimit --nofile=96:96`): segments are opened
//! lazily and few at a time, and nothing held is lost across the kill.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use tern_client::transport::Dialer;
use tern_crypto::DeviceAccount;
use tern_protocol::pb::relay_frame::Frame;
use tern_relay::store::{EmbeddedStore, LogOptions, MailboxStore, NewEnvelope, Quota};
use tern_tests::process::{binary, Binary};

const HELD: u64 = 3_000;
const FD_LIMIT: &str = "--nofile=96:96";

/// Start `tern-relay run` on `data` under the low open-file limit; its URL.
fn start(data: &Path) -> (Child, String) {
    let mut child = Command::new("prlimit")
        .arg(FD_LIMIT)
        .arg("--")
        .arg(binary(Binary::Relay))
        .args(["run", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("prlimit and tern-relay");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("relay url: ") {
                let _ = tx.send(url.to_string());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the relay printed its URL");
    (child, url)
}

/// Authenticate as the mailbox's device, then take (and ack) up to `take`
/// envelopes; returns what was pending and the seqs delivered.
async fn drain(
    url: &str,
    mailbox: &[u8; 16],
    account: &DeviceAccount,
    take: u64,
) -> (u64, Vec<u64>) {
    let mut dialer = Dialer::default();
    let link = dialer.connect(&url.parse().unwrap()).await.unwrap();
    let pending = link
        .authenticate(mailbox, |m| account.sign(m))
        .await
        .unwrap();
    let mut inbox = link.messages().await.unwrap();
    inbox.subscribe(256).await.unwrap();
    let mut seqs = Vec::new();
    let mut acks = Vec::new();
    while (seqs.len() as u64) < take.min(pending) {
        let frame = tokio::time::timeout(Duration::from_secs(60), inbox.next())
            .await
            .expect("an envelope within 60 s")
            .unwrap();
        if let Some(Frame::Envelope(e)) = frame {
            seqs.push(e.seq);
            acks.push(e.seq);
            if acks.len() >= 64 {
                inbox.ack(std::mem::take(&mut acks)).await.unwrap();
            }
        }
    }
    if !acks.is_empty() {
        inbox.ack(acks).await.unwrap();
    }
    inbox.finish(Duration::from_secs(2)).await;
    link.close();
    (pending, seqs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_with_many_segments_restarts_after_sigkill_under_a_low_open_file_limit() {
    let data = tempfile::tempdir().unwrap();
    let account = DeviceAccount::new();
    let mailbox: [u8; 16] = rand::random();
    {
        // Many small segments, as a relay that has run for a long time has
        // many large ones.
        let options = LogOptions {
            segment_bytes: 2048,
            reclaim_every: Duration::from_secs(3600),
            ..LogOptions::default()
        };
        let store = EmbeddedStore::open_with(&data.path().join("db"), options).unwrap();
        store
            .create_mailbox(mailbox, account.signing_key(), tern_tests::now_ms())
            .unwrap();
        let quota = Quota {
            max_envelopes: u64::MAX,
            max_bytes: u64::MAX,
        };
        for i in 0..HELD {
            let mut message_id = [0u8; 16];
            message_id[..8].copy_from_slice(&i.to_be_bytes());
            let env = NewEnvelope {
                message_id,
                payload: &[0x5a; 200],
                now_ms: tern_tests::now_ms(),
                expires_ms: u64::MAX,
            };
            store.append(&mailbox, env, quota).unwrap();
            if i % 7 == 6 {
                store.flush().unwrap();
            }
        }
        store.close().unwrap();
    }
    let segments = std::fs::read_dir(data.path().join("db/envelopes"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "seg")
        })
        .count();
    assert!(segments > 2 * 96, "{segments} segments");

    let (mut relay, url) = start(data.path());
    let (pending, first) = drain(&url, &mailbox, &account, HELD / 2).await;
    assert_eq!(pending, HELD);
    assert_eq!(first, (1..=HELD / 2).collect::<Vec<_>>());
    relay.kill().unwrap();
    relay.wait().unwrap();

    // Acks are durable within a flush or two; a kill right after them may
    // bring a few of the last back, never lose an unacked one.
    let (mut relay, url) = start(data.path());
    let (pending, rest) = drain(&url, &mailbox, &account, HELD).await;
    assert!((HELD / 2..=HELD).contains(&pending), "{pending} pending");
    assert_eq!(rest.len() as u64, pending);
    assert_eq!(rest.last(), Some(&HELD));
    assert!(rest.windows(2).all(|w| w[0] < w[1]));
    assert!(rest.first().is_some_and(|s| *s <= HELD / 2 + 1));
    relay.kill().unwrap();
    relay.wait().unwrap();
}
