//! The moving parts every message workload shares: a recipient device
//! (registered, authenticated, holding a send token), a sender writing
//! opaque payloads with a sliding window of sends in flight, and a receiver
//! that acknowledges in batches and records end-to-end latency.
//!
//! A payload starts with its send time (nanoseconds since the run's start:
//! sender and receiver share one clock, being one process) and its index;
//! the rest is filler. With pacing, the send time is the time the message
//! was *due*, so a sender held back by a full window counts the wait.

use crate::report::Latency;
use anyhow::{anyhow, bail, Context};
use prost::Message;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_client::transport::{Dialer, MessageStream, RelayLink};
use tern_crypto::DeviceAccount;
use tern_protocol::io::{read_frame, write_frame};
use tern_protocol::limits::DEFAULT_MAX_FRAME;
use tern_protocol::pb::{self, relay_frame::Frame};
use tern_protocol::url::RelayUrl;
use tern_protocol::STREAM_MESSAGES;
use tokio::sync::Semaphore;

/// Smallest payload: send time and index.
pub const PAYLOAD_HEADER: usize = 16;

/// A device with a mailbox on the relay, connected and authenticated.
pub struct Recipient {
    /// Its connection (kept open while the value lives).
    pub link: RelayLink,
    /// Its mailbox.
    pub mailbox: [u8; 16],
    /// A send token for it.
    pub token: [u8; 32],
    /// Its keys, to authenticate again later.
    pub account: DeviceAccount,
}

/// Connect, register a new mailbox, authenticate and mint a send token.
pub async fn new_recipient(dialer: &mut Dialer, url: &RelayUrl) -> anyhow::Result<Recipient> {
    let link = dialer.connect(url).await.context("connect")?;
    enroll(link).await
}

/// On a fresh connection: register a new mailbox, authenticate and mint a
/// send token.
pub async fn enroll(link: RelayLink) -> anyhow::Result<Recipient> {
    let account = DeviceAccount::new();
    let mailbox = link
        .register(account.signing_key())
        .await
        .context("register")?;
    link.authenticate(&mailbox, |m| account.sign(m))
        .await
        .context("authenticate")?;
    let token = link.create_token().await.context("create token")?;
    Ok(Recipient {
        link,
        mailbox,
        token,
        account,
    })
}

/// What one sender does.
#[derive(Debug, Clone, Copy)]
pub struct SendPlan {
    /// Envelopes to send.
    pub count: u64,
    /// Payload bytes each (at least [`PAYLOAD_HEADER`]).
    pub size: usize,
    /// Most sends written and not yet answered.
    pub window: usize,
    /// Offered rate for this sender, messages per second; `None`: as fast
    /// as the window allows.
    pub rate: Option<f64>,
    /// Time zero for payload timestamps.
    pub start: Instant,
    /// Give up writing and waiting for answers at this time.
    pub deadline: Instant,
}

/// What one sender saw.
#[derive(Debug, Clone, Default)]
pub struct SendFigures {
    /// Error frames the relay sent on the stream.
    pub errors: u64,
    /// Why the answers stopped early, if they did.
    pub ended: Option<String>,
    /// Sends written.
    pub written: u64,
    /// Sends the relay answered with a sequence number (durably stored).
    pub accepted: u64,
    /// Sends the relay refused.
    pub refused: u64,
    /// When the last answer arrived.
    pub last_answer: Option<Instant>,
}

/// Send `plan.count` opaque envelopes to `to` on a message stream of
/// `link`, pipelined: a new send is written whenever fewer than
/// `plan.window` are unanswered. `progress` counts accepted sends.
pub async fn send(
    link: &RelayLink,
    mailbox: [u8; 16],
    token: [u8; 32],
    plan: SendPlan,
    progress: Option<Arc<AtomicU64>>,
) -> anyhow::Result<SendFigures> {
    let (mut out, mut answers) = link.open_raw_stream().await?;
    out.write_all(&[STREAM_MESSAGES]).await?;
    let window = Arc::new(Semaphore::new(plan.window.max(1)));
    let written = Arc::new(AtomicU64::new(u64::MAX));
    let deadline = tokio::time::Instant::from_std(plan.deadline);

    let reader = {
        let (window, written) = (Arc::clone(&window), Arc::clone(&written));
        tokio::spawn(async move {
            let mut f = SendFigures::default();
            while f.accepted + f.refused < written.load(Relaxed) {
                let body = match tokio::time::timeout_at(
                    deadline,
                    read_frame(&mut answers, DEFAULT_MAX_FRAME),
                )
                .await
                {
                    Ok(Ok(Some(body))) => body,
                    Ok(Ok(None)) => {
                        f.ended = Some("relay ended the stream".into());
                        break;
                    }
                    Ok(Err(e)) => {
                        f.ended = Some(format!("reading answers: {e}"));
                        break;
                    }
                    Err(_) => {
                        f.ended = Some("deadline".into());
                        break;
                    }
                };
                let r = match pb::RelayFrame::decode(&body[..]) {
                    Ok(pb::RelayFrame {
                        frame: Some(Frame::SendResult(r)),
                    }) => r,
                    Ok(pb::RelayFrame {
                        frame: Some(Frame::Error(e)),
                    }) => {
                        f.errors += 1;
                        f.ended.get_or_insert(format!("error frame: {e:?}"));
                        continue;
                    }
                    _ => continue,
                };
                if r.error.is_none() {
                    f.accepted += 1;
                    if let Some(p) = &progress {
                        p.fetch_add(1, Relaxed);
                    }
                } else {
                    f.refused += 1;
                }
                f.last_answer = Some(Instant::now());
                window.add_permits(1);
            }
            f
        })
    };

    let interval = plan
        .rate
        .map(|r| Duration::from_secs_f64(1.0 / r.max(1e-3)));
    let size = plan.size.max(PAYLOAD_HEADER);
    let mut sent = 0u64;
    let mut failure = None;
    while sent < plan.count && Instant::now() < plan.deadline {
        let stamp = match interval {
            Some(gap) => {
                let due = plan.start + gap.mul_f64(sent as f64);
                tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
                due
            }
            None => Instant::now(),
        };
        match tokio::time::timeout_at(deadline, window.acquire()).await {
            Ok(Ok(permit)) => permit.forget(),
            _ => break,
        }
        // Without pacing the clock is read once the window has room, so the
        // figure is the relay's latency, not time spent queued here.
        let stamp = if interval.is_some() {
            stamp
        } else {
            Instant::now()
        };
        let mut payload = vec![0x5a; size];
        let nanos = stamp.duration_since(plan.start).as_nanos() as u64;
        payload[..8].copy_from_slice(&nanos.to_be_bytes());
        payload[8..16].copy_from_slice(&sent.to_be_bytes());
        let frame = pb::ClientFrame {
            frame: Some(pb::client_frame::Frame::Send(pb::Send {
                request_id: sent + 1,
                mailbox_id: mailbox.to_vec().into(),
                token: token.to_vec().into(),
                message_id: rand::random::<[u8; 16]>().to_vec().into(),
                payload: payload.into(),
                ephemeral: false,
            })),
        };
        if let Err(e) = write_frame(&mut out, &frame).await {
            failure = Some(e);
            break;
        }
        sent += 1;
    }
    written.store(sent, Relaxed);
    // Finishing our side makes the relay end its side once every send is
    // answered, which ends the reader even if it already has them all.
    let _ = out.finish();
    let mut figures = reader.await.map_err(|e| anyhow!("send reader: {e}"))?;
    figures.written = sent;
    if figures.accepted + figures.refused < sent {
        let why = figures.ended.as_deref().unwrap_or("unknown");
        eprintln!(
            "sender: {} of {sent} sends unanswered ({why})",
            sent - figures.accepted - figures.refused
        );
    } else {
        figures.ended = None;
    }
    if let Some(e) = failure {
        bail!("writing sends failed after {sent}: {e}");
    }
    Ok(figures)
}

/// What one receiver does.
#[derive(Debug, Clone, Copy)]
pub struct ReceivePlan {
    /// Distinct envelopes expected.
    pub expect: u64,
    /// Acknowledge once this many are unacknowledged (or the stream is
    /// quiet for a moment).
    pub ack_batch: usize,
    /// Time zero for payload timestamps.
    pub start: Instant,
    /// Stop waiting at this time.
    pub deadline: Instant,
}

/// What one receiver saw.
pub struct ReceiveFigures {
    /// Distinct envelopes received.
    pub received: u64,
    /// Envelopes seen again (redelivered).
    pub duplicates: u64,
    /// End-to-end latency of each distinct envelope.
    pub latency: Latency,
    /// When the first and the last distinct envelope arrived.
    pub first: Option<Instant>,
    /// See `first`.
    pub last: Option<Instant>,
}

/// Read pushed envelopes from a subscribed `inbox` until `plan.expect`
/// distinct ones arrived or the deadline passed; acknowledge in batches.
/// `progress` counts distinct envelopes.
pub async fn receive(
    inbox: &mut MessageStream,
    plan: ReceivePlan,
    progress: Option<Arc<AtomicU64>>,
) -> anyhow::Result<ReceiveFigures> {
    let mut seen = vec![0u64; plan.expect.div_ceil(64) as usize];
    let mut f = ReceiveFigures {
        received: 0,
        duplicates: 0,
        latency: Latency::new(),
        first: None,
        last: None,
    };
    let mut acks: Vec<u64> = Vec::with_capacity(plan.ack_batch);
    let quiet = Duration::from_millis(2);
    while f.received < plan.expect && Instant::now() < plan.deadline {
        let frame = match tokio::time::timeout(quiet, inbox.next()).await {
            Ok(r) => r?,
            Err(_) => {
                if !acks.is_empty() {
                    inbox.ack(std::mem::take(&mut acks)).await?;
                }
                continue;
            }
        };
        let e = match frame {
            Some(Frame::Envelope(e)) => e,
            Some(_) => continue,
            None => bail!("relay ended the message stream"),
        };
        let now = Instant::now();
        acks.push(e.seq);
        if e.payload.len() >= PAYLOAD_HEADER {
            let mut word = [0u8; 8];
            word.copy_from_slice(&e.payload[..8]);
            let sent_at = u64::from_be_bytes(word);
            word.copy_from_slice(&e.payload[8..16]);
            let index = u64::from_be_bytes(word);
            let fresh = match seen.get_mut((index / 64) as usize) {
                Some(bits) if *bits & (1 << (index % 64)) == 0 => {
                    *bits |= 1 << (index % 64);
                    true
                }
                _ => false,
            };
            if fresh {
                let at = now.duration_since(plan.start).as_nanos() as u64;
                f.latency.record(at.saturating_sub(sent_at));
                f.received += 1;
                f.first.get_or_insert(now);
                f.last = Some(now);
                if let Some(p) = &progress {
                    p.fetch_add(1, Relaxed);
                }
            } else {
                f.duplicates += 1;
            }
        }
        if acks.len() >= plan.ack_batch {
            inbox.ack(std::mem::take(&mut acks)).await?;
        }
    }
    if !acks.is_empty() {
        inbox.ack(acks).await?;
    }
    Ok(f)
}
