//! The owner's side of presence, on the authenticated home connection:
//! publish the capability hashes (and whether last seen is hidden),
//! register or clear the push endpoint, and beat while connected, well
//! inside the relay's grace period. Runs in a task of its own on a clone
//! of the home link; it ends when the link does.

use crate::error::ClientError;
use crate::transport::RelayLink;
use std::time::Duration;
use tern_protocol::pb::{self, control_request::Request, control_response::Response};
use tokio::sync::mpsc;

/// Beats per grace period: one lost beat never makes a device offline.
const BEATS_PER_GRACE: u64 = 3;
/// Fastest and slowest beat.
const BEAT_RANGE: (u64, u64) = (100, 20_000);

/// What the owner task tells the running client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerNews {
    /// The relay dropped our push endpoint after it failed too long.
    PushDropped,
    /// The relay refused our push endpoint.
    PushRefused(String),
}

fn unexpected(r: Response) -> ClientError {
    match r {
        Response::Error(e) => ClientError::Refused(e.into()),
        other => ClientError::Protocol(format!("unexpected response {other:?}")),
    }
}

/// Publish `hashes` (the capabilities that may watch us) on `link`.
pub async fn publish(
    link: &RelayLink,
    hashes: &[[u8; 32]],
    hide_last_seen: bool,
) -> Result<(), ClientError> {
    let req = Request::PresencePublish(pb::PresencePublish {
        capability_hashes: hashes.iter().map(|h| h.to_vec().into()).collect(),
        hide_last_seen,
    });
    match link.control(req).await? {
        Response::PresencePublished(_) => Ok(()),
        other => Err(unexpected(other)),
    }
}

/// Register `url` as our push endpoint on `link` (empty: none).
pub async fn register_push(link: &RelayLink, url: &str) -> Result<(), ClientError> {
    let req = Request::PushRegister(pb::PushRegister {
        url: url.to_string(),
    });
    match link.control(req).await? {
        Response::PushRegistered(_) => Ok(()),
        other => Err(unexpected(other)),
    }
}

/// One heartbeat; the relay's answer.
pub async fn heartbeat(link: &RelayLink) -> Result<pb::PresenceAlive, ClientError> {
    match link
        .control(Request::PresenceHeartbeat(pb::PresenceHeartbeat {}))
        .await?
    {
        Response::PresenceAlive(a) => Ok(a),
        other => Err(unexpected(other)),
    }
}

/// What the owner task starts with.
pub struct OwnerPlan {
    /// Capability hashes to publish.
    pub hashes: Vec<[u8; 32]>,
    /// Hide last seen from watchers.
    pub hide_last_seen: bool,
    /// Push endpoint to register (`None`: leave the relay's as it is).
    pub push: Option<String>,
}

/// Publish, register, then beat until the link fails.
pub async fn run(link: RelayLink, plan: OwnerPlan, news: mpsc::Sender<OwnerNews>) {
    if let Err(e) = publish(&link, &plan.hashes, plan.hide_last_seen).await {
        tracing::warn!("presence not published: {e}");
        return;
    }
    if let Some(url) = &plan.push {
        if let Err(e) = register_push(&link, url).await {
            let _ = news.send(OwnerNews::PushRefused(e.to_string())).await;
        }
    }
    loop {
        let alive = match heartbeat(&link).await {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!("presence heartbeats stop: {e}");
                return;
            }
        };
        if alive.push_dropped {
            let _ = news.send(OwnerNews::PushDropped).await;
        }
        let every = (alive.grace_ms / BEATS_PER_GRACE).clamp(BEAT_RANGE.0, BEAT_RANGE.1);
        tokio::time::sleep(Duration::from_millis(every)).await;
    }
}
