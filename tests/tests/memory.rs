//! Bounded memory per abuser: one user opens many subscriptions to their
//! own mailbox, from connections that never read, while the mailbox holds
//! large envelopes. Each subscription would fetch its whole push window
//! into memory; the relay (a real `tern-relay` process) must instead hold
//! a bounded amount, which the test reads from its peak resident set
//! (`VmHWM` in `/proc/PID/status`).
//!
//! `TERN_TESTS_RELAY_BIN=/path/to/tern-relay` runs it against another
//! relay build (the figures for the build before the bounds are in the
//! change's report).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};
use tern_client::transport::{Dialer, Outgoing, RelayLink};
use tern_crypto::DeviceAccount;
use tern_protocol::pb;
use tern_protocol::STREAM_MESSAGES;
use tern_tests::process::RelayProcess;
use tern_tests::{random16, RawStream};

/// Envelopes the mailbox holds, each near the largest allowed.
const ENVELOPES: usize = 256;
const PAYLOAD: usize = 60 * 1024;
/// Subscriptions opened, each on a connection of its own that never reads.
const SUBSCRIPTIONS: usize = 32;
/// What the flood may add to the relay's peak resident set. Without
/// bounds each subscription fetches up to its window (256 envelopes, here
/// 15 MiB): about 480 MiB for the flood. With them it is a handful of
/// streams of 1 MiB each, plus QUIC's per-connection send buffers.
const BOUND_MIB: u64 = 96;

/// A `VmXXX:` line of the process's status, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Wait until the relay's peak resident set has stopped growing for a
/// while (its fetches have all come back), at most a minute; returns it.
async fn settled_peak_kib(pid: u32) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut last, mut still) = (status_kib(pid, "VmHWM:"), 0);
    while still < 12 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = status_kib(pid, "VmHWM:");
        if now == last {
            still += 1;
        } else {
            (last, still) = (now, 0);
        }
    }
    last
}

async fn owner_link(
    dialer: &mut Dialer,
    relay: &RelayProcess,
    who: &(DeviceAccount, [u8; 16]),
) -> RelayLink {
    let link = dialer.connect(&relay.relay_url()).await.unwrap();
    link.authenticate(&who.1, |m| who.0.sign(m)).await.unwrap();
    link
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_unread_subscriptions_to_one_mailbox_keep_the_relays_memory_bounded() {
    let relay = RelayProcess::start();
    let pid = relay.pid();
    let mut dialer = Dialer::default();

    // The abuser's own mailbox, filled with large envelopes.
    let account = DeviceAccount::new();
    let link = dialer.connect(&relay.relay_url()).await.unwrap();
    let mailbox = link.register(account.signing_key()).await.unwrap();
    let owner = (account, mailbox);
    link.authenticate(&owner.1, |m| owner.0.sign(m))
        .await
        .unwrap();
    let token = link.create_token().await.unwrap();
    let mut out = link.messages().await.unwrap();
    for chunk in 0..ENVELOPES / 64 {
        let batch: Vec<Outgoing> = (0..64)
            .map(|i| Outgoing {
                mailbox,
                token,
                message_id: random16(),
                payload: vec![(chunk * 64 + i) as u8; PAYLOAD],
            })
            .collect();
        let results = out.send_all(&batch).await.unwrap();
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }
    out.finish(Duration::from_secs(5)).await;
    link.close();
    let before = settled_peak_kib(pid).await;

    // The flood: subscriptions that never read a byte.
    let mut held = Vec::new();
    for _ in 0..SUBSCRIPTIONS {
        let link = owner_link(&mut dialer, &relay, &owner).await;
        let mut stream = RawStream::open(&link, STREAM_MESSAGES).await;
        let subscribe = pb::ClientFrame {
            frame: Some(pb::client_frame::Frame::Subscribe(pb::Subscribe {
                window: 0,
            })),
        };
        stream.write_msg(&subscribe).await;
        held.push((link, stream));
    }
    let after = settled_peak_kib(pid).await;
    let grown_mib = after.saturating_sub(before) / 1024;
    println!(
        "relay peak RSS: {} MiB before the flood, {} MiB after {SUBSCRIPTIONS} unread subscriptions \
         to a mailbox of {ENVELOPES} x {} KiB (+{grown_mib} MiB)",
        before / 1024,
        after / 1024,
        PAYLOAD / 1024
    );
    assert!(
        grown_mib < BOUND_MIB,
        "the flood grew the relay's peak RSS by {grown_mib} MiB (bound {BOUND_MIB} MiB)"
    );

    // The relay still serves the owner: a fresh subscription is pushed the
    // mailbox's envelopes (the newest subscription replaces the oldest).
    let link = owner_link(&mut dialer, &relay, &owner).await;
    let mut stream = link.messages().await.unwrap();
    stream.subscribe(4).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("the relay answered a fresh subscription")
        .unwrap();
    assert!(
        matches!(first, Some(pb::relay_frame::Frame::Envelope(_))),
        "{first:?}"
    );
    drop(held);
}
