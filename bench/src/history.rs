//! History restore: one account with N messages in one conversation, sent
//! for real (alice to bob, each stored, queued and uploaded as the client
//! does with history on), then restored onto fresh devices of the same
//! account (each made from a backup taken before the messages, as a new
//! machine would be) with `restore_history`: time from the first request
//! to all N stored and flushed, and relay bytes per history message (growth
//! of the relay's `history/` directory over the upload).

use crate::relay::BenchRelay;
use crate::report::Row;
use anyhow::{anyhow, Context};
use std::path::Path;
use std::time::{Duration, Instant};
use tern_client::{Client, Event};

/// What one history-restore measurement does.
#[derive(Debug, Clone, Copy)]
pub struct HistoryPlan {
    /// Messages in the conversation.
    pub messages: usize,
    /// Restores measured (each onto a fresh device).
    pub restores: usize,
}

fn dir_bytes(p: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(p) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Set up the account, then measure `plan.restores` restores; one row each.
pub async fn run(relay: &BenchRelay, plan: HistoryPlan) -> anyhow::Result<Vec<Row>> {
    let tmp = tempfile::tempdir()?;
    let history_dir = relay
        .data_dir()
        .map(|d| d.join("history"))
        .ok_or_else(|| anyhow!("history-restore needs a relay this tool starts"))?;
    let mut alice = Client::init(&tmp.path().join("alice"), &relay.url, "alice").await?;
    let mut bob = Client::init(&tmp.path().join("bob"), &relay.url, "bob").await?;
    for c in [&alice, &bob] {
        c.set_send_spacing(Duration::ZERO, Duration::ZERO);
    }
    let code = alice.invite().await?;
    bob.accept(&code, "alice").await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = alice.receive(Duration::from_millis(200)).await?;
        if events
            .iter()
            .any(|e| matches!(e, Event::ContactAdded { .. }))
        {
            break;
        }
        if Instant::now() > deadline {
            return Err(anyhow!("bob's hello never arrived"));
        }
    }
    alice.set_history_days(90).await?;
    let backup = tmp.path().join("alice.tern");
    let phrase = alice.export_backup(&backup).await?;

    let before = dir_bytes(&history_dir);
    let started = Instant::now();
    for i in 0..plan.messages {
        let text = format!("history bench message {i:05}: a line of ordinary chat length");
        alice.send_text("bob", &text).await?;
        // Upload as a running client does, in batches.
        if (i + 1) % 1_000 == 0 {
            alice.upload_history().await?;
        }
    }
    alice.upload_history().await?;
    let upload_s = started.elapsed().as_secs_f64();
    let grown = dir_bytes(&history_dir).saturating_sub(before);
    let file = std::fs::read(&backup).context("reading the backup")?;

    let mut rows = Vec::new();
    for r in 0..plan.restores.max(1) {
        let home = tmp.path().join(format!("restored-{r}"));
        let mut device = Client::restore_backup(&home, &file, &phrase, None).await?;
        let t = Instant::now();
        let done = device.restore_history(&mut |_| {}).await?;
        let secs = t.elapsed().as_secs_f64();
        if done.restored != plan.messages as u64 {
            return Err(anyhow!(
                "restored {} of {} messages",
                done.restored,
                plan.messages
            ));
        }
        rows.push(Row {
            label: format!("N={}", plan.messages),
            values: vec![
                ("restore s", secs),
                ("msgs/s", plan.messages as f64 / secs),
                ("relay B/msg", grown as f64 / plan.messages as f64),
                ("send+upload s", upload_s),
            ],
        });
        device.close().await;
    }
    Ok(rows)
}
