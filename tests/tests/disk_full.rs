//! The relay's disk fills up: new sends are refused with a typed error, what
//! is stored keeps being delivered, and sends work again by themselves once
//! space returns. The disk is a small tmpfs this test mounts itself, so it
//! needs root (CI runs as root); elsewhere it says so and does nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_client::transport::{Dialer, Outgoing};
use tern_crypto::DeviceAccount;
use tern_protocol::pb::relay_frame::Frame;
use tern_protocol::ErrorCode;
use tern_relay::{Limits, RateConfig, RelayConfig, RunningRelay, SystemClock};
use tern_tests::random16;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn envelope(mailbox: [u8; 16], token: [u8; 32], size: usize) -> Outgoing {
    Outgoing {
        mailbox,
        token,
        message_id: random16(),
        payload: vec![0xab; size],
    }
}

/// Fill the disk with a ballast file until `free` bytes are left.
fn fill_to(dir: &Path, free: u64) -> std::path::PathBuf {
    let path = dir.join("ballast");
    let now = fs2::available_space(dir).unwrap();
    let f = std::fs::File::create(&path).unwrap();
    // tmpfs allocates on write, so write real bytes rather than set_len.
    let mut left = now.saturating_sub(free);
    let chunk = vec![0u8; 1 << 20];
    let mut w = std::io::BufWriter::new(f);
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        std::io::Write::write_all(&mut w, &chunk[..n]).unwrap();
        left -= n as u64;
    }
    std::io::Write::flush(&mut w).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_refuses_sends_keeps_delivering_and_recovers() {
    let root = tempfile::tempdir().unwrap();
    let disk = root.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    let Some(_tmpfs) = Tmpfs::mount(&disk, "256m") else {
        eprintln!("disk_full: cannot mount a tmpfs (not root?); not run");
        return;
    };
    let config = RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: disk.join("relay"),
        limits: Limits {
            min_free_disk_bytes: 64 << 20,
            ..Limits::default()
        },
        rates: RateConfig::unlimited(),
        ..RelayConfig::default()
    };
    let relay = RunningRelay::start(config, Arc::new(SystemClock))
        .await
        .unwrap();

    // A recipient with a mailbox and a token, speaking the protocol directly.
    let account = DeviceAccount::new();
    let mut dialer = Dialer::default();
    let owner = dialer.connect(&relay.url).await.unwrap();
    let mailbox = owner.register(account.signing_key()).await.unwrap();
    owner
        .authenticate(&mailbox, |m| account.sign(m))
        .await
        .unwrap();
    let token = owner.create_token().await.unwrap();
    let sender = dialer.connect(&relay.url).await.unwrap();
    let mut out = sender.messages().await.unwrap();
    let batch: Vec<Outgoing> = (0..20).map(|_| envelope(mailbox, token, 1000)).collect();
    assert!(out
        .send_all(&batch)
        .await
        .unwrap()
        .iter()
        .all(Result::is_ok));

    // The disk fills up (to half the relay's reserve): sends are refused,
    // typed, with a time to retry, within the disk watch's second.
    let ballast = fill_to(&disk, 32 << 20);
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        assert!(Instant::now() < deadline, "sends never refused");
        let r = out
            .send_all(&[envelope(mailbox, token, 1000)])
            .await
            .unwrap();
        match r.into_iter().next().unwrap() {
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => break e,
        }
    };
    assert_eq!(refused.code, ErrorCode::StorageUnavailable, "{refused}");
    assert!(refused.retry_after_ms > 0);
    let again = out.send_all(&[envelope(mailbox, token, 10)]).await.unwrap();
    assert_eq!(
        again[0].as_ref().unwrap_err().code,
        ErrorCode::StorageUnavailable
    );
    // Registrations and new tokens wait too.
    let newcomer = DeviceAccount::new();
    assert!(owner.register(newcomer.signing_key()).await.is_err());

    // Everything stored is still delivered (and acked) while the disk is full.
    let mut inbox = owner.messages().await.unwrap();
    inbox.subscribe(0).await.unwrap();
    let mut delivered = 0usize;
    loop {
        match inbox.next().await.unwrap() {
            Some(Frame::Envelope(e)) => {
                delivered += 1;
                inbox.ack(vec![e.seq]).await.unwrap();
            }
            Some(Frame::CaughtUp(_)) => break,
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("relay ended the stream"),
        }
    }
    assert!(delivered >= 20, "delivered {delivered}");
    eprintln!("disk_full: {delivered} delivered while full; refusal was: {refused}");

    // Space returns: sends are accepted again without a restart.
    std::fs::remove_file(ballast).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = out
            .send_all(&[envelope(mailbox, token, 100)])
            .await
            .unwrap();
        match &r[0] {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.code, ErrorCode::StorageUnavailable);
                assert!(Instant::now() < deadline, "never recovered");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    match inbox.next().await.unwrap() {
        Some(Frame::Envelope(e)) => assert_eq!(e.payload.len(), 100),
        other => panic!("expected the new envelope, got {other:?}"),
    }
    drop(inbox);
    drop(out);
    relay.shutdown().await;
}
