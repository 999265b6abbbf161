//! The owner's side of presence, on the authenticated home connection:
//! publish the capability hashes (and whether last seen is hidden),
//! register or clear the push endpoint, and beat while connected, well
//! inside the relay's grace period, on one heartbeat stream ([`Beats`])
//! for the connection's life. Runs in a task of its own on a clone
//! of the home link; it ends when the link does.

use crate::error::ClientError;
use crate::transport::RelayLink;
use crate::transport::REQUEST_TIMEOUT;
use std::time::Duration;
use tern_protocol::frame::decode_message;
use tern_protocol::io::{read_frame, write_frame};
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

/// A heartbeat stream on the home connection (stream kind 4): every beat
/// a request and an answer on one stream, rather than a control stream
/// opened and closed per beat.
pub struct Beats {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl Beats {
    /// Open the stream on `link`.
    pub async fn open(link: &RelayLink) -> Result<Self, ClientError> {
        let (mut send, recv) = link.open_raw_stream().await?;
        send.write_all(&[tern_protocol::STREAM_BEATS])
            .await
            .map_err(|e| broken(e.to_string()))?;
        Ok(Beats { send, recv })
    }

    /// One heartbeat; the relay's answer (within [`REQUEST_TIMEOUT`]).
    pub async fn beat(&mut self) -> Result<pb::PresenceAlive, ClientError> {
        let req = pb::ControlRequest {
            request: Some(Request::PresenceHeartbeat(pb::PresenceHeartbeat {})),
        };
        let exchange = async {
            write_frame(&mut self.send, &req)
                .await
                .map_err(|e| broken(e.to_string()))?;
            read_frame(&mut self.recv, MAX_ANSWER)
                .await
                .map_err(|e| broken(e.to_string()))?
                .ok_or_else(|| broken("the relay ended it".into()))
        };
        let body = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| broken("no answer in time".into()))??;
        let answer: pb::ControlResponse =
            decode_message(&body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        match answer.response {
            Some(Response::PresenceAlive(a)) => Ok(a),
            Some(other) => Err(unexpected(other)),
            None => Err(ClientError::Protocol("an empty heartbeat answer".into())),
        }
    }
}

/// Largest answer read from a heartbeat stream.
const MAX_ANSWER: usize = 4 * 1024;

fn broken(e: String) -> ClientError {
    ClientError::Protocol(format!("heartbeat stream: {e}"))
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
    // Beats go on one stream; a relay without heartbeat streams (or one
    // that broke it) gets them as control requests instead.
    let mut beats = Beats::open(&link).await.ok();
    loop {
        let on_stream = match beats.as_mut() {
            Some(b) => Some(b.beat().await),
            None => None,
        };
        let beat = match on_stream {
            Some(Ok(alive)) => Ok(alive),
            Some(Err(e)) => {
                tracing::debug!("heartbeat stream given up: {e}");
                beats = None;
                heartbeat(&link).await
            }
            None => heartbeat(&link).await,
        };
        let alive = match beat {
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
