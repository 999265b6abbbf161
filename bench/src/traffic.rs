//! The moving parts every message workload shares: a recipient device
//! (registered, authenticated, holding a send token), a sender writing
//! payloads with a sliding window of sends in flight, and a receiver that
//! acknowledges in batches and records end-to-end latency.
//!
//! Each message carries its send time (nanoseconds since the run's start:
//! sender and receiver share one clock, being one process) and its index.
//! In [`Mode::Opaque`] they are the payload's first 16 bytes and the rest is
//! filler; in [`Mode::E2e`] they open a text that is encrypted as the client
//! does it ([`crate::e2e`]) and read only after decryption. With pacing, the
//! send time is the time the message was *due*, so a sender held back by a
//! full window counts the wait.

use crate::e2e::{self, Channel};
use crate::report::Latency;
use anyhow::{anyhow, bail, Context};
use bytes::BytesMut;
use prost::Message;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_client::transport::{Dialer, MessageStream, RelayLink};
use tern_crypto::DeviceAccount;
use tern_protocol::frame::encode_frame_into;
use tern_protocol::io::FrameReader;
use tern_protocol::limits::DEFAULT_MAX_FRAME;
use tern_protocol::pb::{self, relay_frame::Frame};
use tern_protocol::url::RelayUrl;
use tern_protocol::STREAM_MESSAGES;
use tokio::sync::Semaphore;

/// Smallest opaque payload: send time and index.
pub const PAYLOAD_HEADER: usize = 16;

/// Most sends written in one go.
const WRITE_BATCH: u64 = 64;

/// What the messages of a run are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Opaque payloads: no client crypto, the relay alone is measured.
    Opaque,
    /// Texts encrypted and decrypted as the client does ([`crate::e2e`]).
    E2e,
}

impl Mode {
    /// The mode's name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Opaque => "opaque",
            Mode::E2e => "e2e",
        }
    }

    /// What a row label gets appended so the table says the mode.
    pub fn label_suffix(self) -> &'static str {
        match self {
            Mode::Opaque => "",
            Mode::E2e => " e2e",
        }
    }

    /// The sender's and the receiver's [`Payloads`] for one pair whose
    /// receiving device is `receiver`; in E2E mode this runs the Olm
    /// handshake (see [`e2e::handshake`]).
    pub fn pair(self, receiver: &mut DeviceAccount) -> anyhow::Result<(Payloads, Payloads)> {
        match self {
            Mode::Opaque => Ok((Payloads::Opaque, Payloads::Opaque)),
            Mode::E2e => {
                let (outbound, inbound) = e2e::handshake(receiver)?;
                Ok((
                    Payloads::E2e(Box::new(outbound)),
                    Payloads::E2e(Box::new(inbound)),
                ))
            }
        }
    }
}

/// How one end of a pair writes or reads its payloads.
pub enum Payloads {
    /// Send time, index and filler in the clear.
    Opaque,
    /// Its end of the pair's Olm conversation.
    E2e(Box<Channel>),
}

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
    /// Payload bytes each (at least [`PAYLOAD_HEADER`]); in E2E mode, text
    /// bytes (at least [`e2e::STAMP_TEXT_LEN`]) before encryption.
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
    /// Time spent building, encrypting and sealing payloads (E2E mode).
    pub crypto: Duration,
}

/// Send `plan.count` envelopes to `mailbox` on a message stream of `link`,
/// pipelined: a new send is written whenever fewer than `plan.window` are
/// unanswered. `payloads` says how each payload is made. `progress` counts
/// accepted sends.
pub async fn send(
    link: &RelayLink,
    mailbox: [u8; 16],
    token: [u8; 32],
    plan: SendPlan,
    mut payloads: Payloads,
    progress: Option<Arc<AtomicU64>>,
) -> anyhow::Result<SendFigures> {
    let (mut out, answers) = link.open_raw_stream().await?;
    out.write_all(&[STREAM_MESSAGES]).await?;
    let window = Arc::new(Semaphore::new(plan.window.max(1)));
    let written = Arc::new(AtomicU64::new(u64::MAX));
    let deadline = tokio::time::Instant::from_std(plan.deadline);

    let reader = {
        let (window, written) = (Arc::clone(&window), Arc::clone(&written));
        tokio::spawn(async move {
            let mut f = SendFigures::default();
            let mut answers = FrameReader::new(answers, DEFAULT_MAX_FRAME);
            while f.accepted + f.refused < written.load(Relaxed) {
                // Cancel-safe: a timeout never loses half a frame.
                let body = match tokio::time::timeout_at(deadline, answers.next()).await {
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
    let mut sent = 0u64;
    let mut crypto = Duration::ZERO;
    let mut failure = None;
    let mut buf = BytesMut::new();
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
        // Unpaced, every send the window has room for leaves in one write,
        // as a client flushing its outbox does.
        let mut batch = 1u64;
        while interval.is_none() && batch < WRITE_BATCH && sent + batch < plan.count {
            match window.try_acquire() {
                Ok(permit) => permit.forget(),
                Err(_) => break,
            }
            batch += 1;
        }
        // Without pacing the clock is read once the window has room, so the
        // figure is the relay's latency, not time spent queued here.
        let stamp = if interval.is_some() {
            stamp
        } else {
            Instant::now()
        };
        let nanos = stamp.duration_since(plan.start).as_nanos() as u64;
        for _ in 0..batch {
            let payload = match &mut payloads {
                Payloads::Opaque => {
                    let mut payload = vec![0x5a; plan.size.max(PAYLOAD_HEADER)];
                    payload[..8].copy_from_slice(&nanos.to_be_bytes());
                    payload[8..16].copy_from_slice(&sent.to_be_bytes());
                    payload
                }
                Payloads::E2e(channel) => {
                    let began = Instant::now();
                    let payload = channel.seal_text(e2e::stamp_text(plan.size, nanos, sent));
                    crypto += began.elapsed();
                    payload
                }
            };
            let frame = pb::ClientFrame::send(
                sent + 1,
                mailbox.to_vec().into(),
                token.to_vec().into(),
                rand::random::<[u8; 16]>().to_vec().into(),
                payload.into(),
            );
            encode_frame_into(&frame, &mut buf);
            sent += 1;
        }
        if let Err(e) = out.write_chunk(buf.split().freeze()).await {
            failure = Some(e);
            break;
        }
    }
    written.store(sent, Relaxed);
    // Finishing our side makes the relay end its side once every send is
    // answered, which ends the reader even if it already has them all.
    let _ = out.finish();
    let mut figures = reader.await.map_err(|e| anyhow!("send reader: {e}"))?;
    figures.written = sent;
    figures.crypto = crypto;
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
    /// Time spent opening, decrypting and decoding payloads (E2E mode).
    pub crypto: Duration,
}

/// Read pushed envelopes from a subscribed `inbox` until `plan.expect`
/// distinct ones arrived or the deadline passed; acknowledge in batches.
/// `payloads` says how to read them: in E2E mode an envelope is counted only
/// once it opened, decrypted and decoded, and one that does not is an error.
/// `progress` counts distinct envelopes.
pub async fn receive(
    inbox: &mut MessageStream,
    plan: ReceivePlan,
    mut payloads: Payloads,
    progress: Option<Arc<AtomicU64>>,
) -> anyhow::Result<ReceiveFigures> {
    let mut seen = vec![0u64; plan.expect.div_ceil(64) as usize];
    // Envelope ids already opened: a redelivered envelope is recognised by
    // its id before decryption, as the client does, because Olm refuses to
    // decrypt a message twice.
    let mut opened: HashSet<Vec<u8>> = HashSet::new();
    let mut f = ReceiveFigures {
        received: 0,
        duplicates: 0,
        latency: Latency::new(),
        first: None,
        last: None,
        crypto: Duration::ZERO,
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
        acks.push(e.seq);
        let stamp = match &mut payloads {
            Payloads::Opaque => opaque_stamp(&e.payload),
            Payloads::E2e(_) if !opened.insert(e.message_id.to_vec()) => {
                f.duplicates += 1;
                None
            }
            Payloads::E2e(channel) => {
                let began = Instant::now();
                let text = channel
                    .open_text(&e.payload)
                    .with_context(|| format!("envelope seq {} does not decrypt", e.seq))?;
                f.crypto += began.elapsed();
                Some(e2e::read_stamp(&text).with_context(|| format!("envelope seq {}", e.seq))?)
            }
        };
        let now = Instant::now();
        if let Some((sent_at, index)) = stamp {
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

/// Send time and index from an opaque payload; `None` if it is too short.
fn opaque_stamp(payload: &[u8]) -> Option<(u64, u64)> {
    let word = |r: std::ops::Range<usize>| {
        payload
            .get(r)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
    };
    Some((word(0..8)?, word(8..16)?))
}
