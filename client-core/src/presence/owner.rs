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

/// Fewest beats per grace period: one lost beat never makes a device
/// offline.
const BEATS_PER_GRACE: u64 = 3;
/// Fastest and slowest beat, in milliseconds.
const BEAT_RANGE: (u64, u64) = (100, 20_000);
/// How much sooner than the connection's keep-alive a datagram beat goes:
/// the relay's acknowledgment of the beat (delayed up to 25 ms, plus the
/// round trip) must reach us before quinn would send a keep-alive PING.
const KEEP_ALIVE_LEAD: Duration = Duration::from_millis(100);

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

/// How often to beat on a connection with a `keep_alive` interval, to a
/// relay with a grace period of `grace_ms`: just inside the keep-alive,
/// so each beat stands in for quinn's keep-alive PING and heartbeats cost
/// no packet the idle connection would not send anyway; and at least
/// [`BEATS_PER_GRACE`] times a grace period. (100 ms to 20 s.)
pub fn beat_pace(grace_ms: u64, keep_alive: Duration) -> Duration {
    let by_grace = grace_ms / BEATS_PER_GRACE;
    let by_keep_alive = keep_alive.saturating_sub(KEEP_ALIVE_LEAD).as_millis();
    let ms = by_grace.min(u64::try_from(by_keep_alive).unwrap_or(u64::MAX));
    Duration::from_millis(ms.clamp(BEAT_RANGE.0, BEAT_RANGE.1))
}

/// One home connection's heartbeats. The first goes on a control stream,
/// and its answer tells the grace period and whether the relay dropped our
/// push endpoint; the rest are datagrams at [`beat_pace`], unanswered (a
/// lost one is covered by the next: there are at least three a grace
/// period). To a relay that takes no datagrams, every beat goes on a
/// control stream, every grace/3.
pub struct Beats {
    link: RelayLink,
    pace: Duration,
    datagrams: bool,
}

impl Beats {
    /// The first, answered heartbeat on `link`.
    pub async fn start(link: RelayLink) -> Result<(Self, pb::PresenceAlive), ClientError> {
        let alive = heartbeat(&link).await?;
        let pace = beat_pace(alive.grace_ms, link.keep_alive());
        let beats = Self {
            link,
            pace,
            datagrams: true,
        };
        Ok((beats, alive))
    }

    /// How long to wait between beats.
    pub fn pace(&self) -> Duration {
        self.pace
    }

    /// One more heartbeat; the relay's answer if it went on a control
    /// stream.
    pub async fn beat(&mut self) -> Result<Option<pb::PresenceAlive>, ClientError> {
        if self.datagrams && self.link.beat_datagram()? {
            return Ok(None);
        }
        self.datagrams = false;
        let alive = heartbeat(&self.link).await?;
        self.pace = beat_pace(alive.grace_ms, Duration::MAX);
        Ok(Some(alive))
    }
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
    let (mut beats, first) = match Beats::start(link).await {
        Ok(b) => b,
        Err(e) => {
            tracing::debug!("presence heartbeats stop: {e}");
            return;
        }
    };
    let mut answer = Some(first);
    let mut tick = ticker(beats.pace());
    loop {
        if answer.take().is_some_and(|a| a.push_dropped) {
            let _ = news.send(OwnerNews::PushDropped).await;
        }
        tick.tick().await;
        answer = match beats.beat().await {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!("presence heartbeats stop: {e}");
                return;
            }
        };
        if tick.period() != beats.pace() {
            tick = ticker(beats.pace());
        }
    }
}

/// Ticks every `period`, the first one `period` from now; a late tick
/// delays the rest rather than bunching them.
fn ticker(period: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{FLEET_KEEP_ALIVE, PROMPT_KEEP_ALIVE, WATCH_KEEP_ALIVE};

    #[test]
    fn beats_go_just_inside_the_keep_alive_and_at_least_three_times_a_grace_period() {
        let ms = |d: Duration| d.as_millis();
        // The default: a 30 s grace, a 4 s keep-alive on a lone relay.
        assert_eq!(ms(beat_pace(30_000, PROMPT_KEEP_ALIVE)), 3_900);
        // A fleet's tight keep-alive.
        assert_eq!(ms(beat_pace(30_000, FLEET_KEEP_ALIVE)), 400);
        // A slow keep-alive, or none (control beats): grace / 3.
        assert_eq!(ms(beat_pace(30_000, WATCH_KEEP_ALIVE)), 10_000);
        assert_eq!(ms(beat_pace(30_000, Duration::MAX)), 10_000);
        assert_eq!(ms(beat_pace(3_000, PROMPT_KEEP_ALIVE)), 1_000);
        // Bounds: a grace of nothing, or of a day.
        assert_eq!(ms(beat_pace(0, PROMPT_KEEP_ALIVE)), 100);
        assert_eq!(ms(beat_pace(86_400_000, Duration::MAX)), 20_000);
    }
}
