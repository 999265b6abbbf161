//! Watching contacts' presence: one presence stream per relay that holds
//! grants, each on a connection of its own that never authenticates
//! ([`Dialer::connect_unlinked_with`]), so the relay cannot tie the watcher
//! to its mailbox. Watcher connections keep the slower keep-alive pace of
//! [`Liveness::Watch`]. Updates come as the relay pushes them; a stream
//! that breaks is opened again after a backoff.

use super::HeldGrant;
use crate::backoff::Backoff;
use crate::error::ClientError;
use crate::transport::{Dialer, Liveness, RelayLink};
use std::collections::BTreeMap;
use std::time::Duration;
use tern_protocol::frame::decode_message;
use tern_protocol::io::{read_frame, write_frame};
use tern_protocol::pb;
use tern_protocol::url::RelayUrl;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Largest presence frame read.
const MAX_FRAME: usize = 64 * 1024;

/// One watched device's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The granting device's identity key.
    pub device: [u8; 32],
    /// Online now.
    pub online: bool,
    /// When last online (ms, rounded by the relay); 0 when hidden or unknown.
    pub last_seen_ms: u64,
}

/// Open a presence stream on `link` for `caps`.
pub async fn subscribe(
    link: &RelayLink,
    caps: &[[u8; 32]],
) -> Result<(quinn::SendStream, quinn::RecvStream), ClientError> {
    let (mut send, recv) = link.open_raw_stream().await?;
    let broken = |e: String| ClientError::Protocol(format!("presence stream: {e}"));
    send.write_all(&[tern_protocol::STREAM_PRESENCE])
        .await
        .map_err(|e| broken(e.to_string()))?;
    let sub = pb::PresenceSubscribe {
        capabilities: caps.iter().map(|c| c.to_vec().into()).collect(),
    };
    write_frame(&mut send, &sub)
        .await
        .map_err(|e| broken(e.to_string()))?;
    Ok((send, recv))
}

/// The next update on a presence stream; `None` when it ended.
pub async fn next_update(
    recv: &mut quinn::RecvStream,
) -> Result<Option<pb::PresenceUpdate>, ClientError> {
    let body = read_frame(recv, MAX_FRAME)
        .await
        .map_err(|e| ClientError::Protocol(format!("presence stream: {e}")))?;
    let Some(body) = body else { return Ok(None) };
    let frame: pb::PresenceFrame =
        decode_message(&body).map_err(|e| ClientError::Protocol(e.to_string()))?;
    match frame.frame {
        Some(pb::presence_frame::Frame::Update(u)) => Ok(Some(u)),
        Some(pb::presence_frame::Frame::Error(e)) => Err(ClientError::Refused(e.into())),
        None => Err(ClientError::Protocol("an empty presence frame".into())),
    }
}

/// Watch one relay's grants until the task is dropped.
async fn watch_relay(dialer: Dialer, url: String, grants: Vec<HeldGrant>, out: mpsc::Sender<Seen>) {
    let Ok(parsed) = url.parse::<RelayUrl>() else {
        return;
    };
    let caps: Vec<[u8; 32]> = grants.iter().map(|g| g.capability).collect();
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let mut d = dialer.clone();
        let result: Result<(), ClientError> = async {
            let link = d.connect_unlinked_with(&parsed, Liveness::Watch).await?;
            let (_send, mut recv) = subscribe(&link, &caps).await?;
            while let Some(u) = next_update(&mut recv).await? {
                backoff.reset();
                if let Some(g) = grants.get(u.index as usize) {
                    let seen = Seen {
                        device: g.device,
                        online: u.online,
                        last_seen_ms: u.last_seen_ms,
                    };
                    if out.send(seen).await.is_err() {
                        return Ok(());
                    }
                }
            }
            Ok(())
        }
        .await;
        if out.is_closed() {
            return;
        }
        if let Err(e) = result {
            tracing::debug!("presence watch of a relay broke: {e}");
        }
        tokio::time::sleep(backoff.next_delay(None)).await;
    }
}

/// Watch every grant in `grants`, one stream per relay, until the
/// returned set is dropped.
pub fn watch_all(dialer: &Dialer, grants: Vec<HeldGrant>, out: mpsc::Sender<Seen>) -> JoinSet<()> {
    let mut by_relay: BTreeMap<String, Vec<HeldGrant>> = BTreeMap::new();
    for g in grants {
        by_relay.entry(g.relay_url.clone()).or_default().push(g);
    }
    let mut set = JoinSet::new();
    for (url, grants) in by_relay {
        set.spawn(watch_relay(dialer.clone(), url, grants, out.clone()));
    }
    set
}

/// Ask each relay once for the current state of `grants`: what arrives
/// within `wait` of subscribing (every valid capability's state comes at
/// once). For `tern presence` without a running client.
pub async fn snapshot(dialer: &Dialer, grants: Vec<HeldGrant>, wait: Duration) -> Vec<Seen> {
    let expected = grants.len();
    let (tx, mut rx) = mpsc::channel(1024);
    let set = watch_all(dialer, grants, tx);
    let mut seen: Vec<Seen> = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while seen.len() < expected {
        let Ok(Some(s)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            break;
        };
        seen.retain(|o| o.device != s.device);
        seen.push(s);
    }
    drop(set);
    seen
}
