//! Dialing a relay URL that may name a fleet (docs/protocol.md §1): every
//! address of every host in the URL, each DNS record of each, tried in
//! random order so a fleet's clients spread over its relays. Each next
//! address gets a head start of [`STAGGER`] on the one before it (Happy
//! Eyeballs, RFC 8305), so a relay that died costs a quarter of a second,
//! not a connect timeout; the first handshake to finish wins and the others
//! are abandoned. Addresses that failed lately are tried last.

use crate::error::ClientError;
use rand::seq::SliceRandom;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tern_protocol::url::RelayUrl;
use tokio::task::JoinSet;

/// Head start of one address over the next.
pub const STAGGER: Duration = Duration::from_millis(250);
/// How long an address that failed stays at the back of the order.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(30);
/// Most failed addresses remembered (one per relay address a client has
/// lately seen fail: a handful in practice).
const MAX_REMEMBERED: usize = 256;

/// Addresses that failed lately, shared by a dialer's clones.
#[derive(Debug, Default, Clone)]
pub struct Failures(Arc<Mutex<HashMap<SocketAddr, Instant>>>);

impl Failures {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Instant>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remember that `addr` failed now.
    pub fn record(&self, addr: SocketAddr) {
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, at| now.duration_since(*at) < FAILURE_MEMORY);
        if map.len() < MAX_REMEMBERED {
            map.insert(addr, now);
        }
    }

    /// Forget `addr`'s failure: it just worked.
    pub fn clear(&self, addr: &SocketAddr) {
        self.lock().remove(addr);
    }

    /// Whether `addr` failed within [`FAILURE_MEMORY`].
    fn failed_lately(&self, addr: &SocketAddr, now: Instant) -> bool {
        self.lock()
            .get(addr)
            .is_some_and(|at| now.duration_since(*at) < FAILURE_MEMORY)
    }
}

/// The order to try `found` in: shuffled, then those that failed lately
/// moved to the back (each group keeping its shuffled order).
pub fn order(mut found: Vec<SocketAddr>, failures: &Failures) -> Vec<SocketAddr> {
    let mut seen = std::collections::HashSet::new();
    found.retain(|a| seen.insert(*a));
    found.shuffle(&mut rand::thread_rng());
    let now = Instant::now();
    found.sort_by_key(|a| failures.failed_lately(a, now));
    found
}

/// Every socket address the URL's hosts resolve to, in the order to try
/// them. A host that does not resolve is skipped while another does.
pub async fn candidates(
    url: &RelayUrl,
    failures: &Failures,
) -> Result<Vec<SocketAddr>, ClientError> {
    let mut found = Vec::new();
    let mut last_error = None;
    for addr in url.addrs() {
        match tokio::net::lookup_host(addr.authority()).await {
            Ok(records) => found.extend(records),
            Err(e) => last_error = Some(format!("{}: {e}", addr.authority())),
        }
    }
    if found.is_empty() {
        return Err(ClientError::Unreachable {
            relay: url.authority(),
            reason: last_error.unwrap_or_else(|| "no address".into()),
        });
    }
    Ok(order(found, failures))
}

/// Run `attempt` on `addrs` in order, each [`STAGGER`] after the one before
/// it or at once when the one before it failed; the first success wins and
/// the attempts still running are abandoned. Every failure is remembered
/// in `failures`; all failing returns the last failure.
pub async fn race<T, F, Fut>(
    addrs: Vec<SocketAddr>,
    failures: &Failures,
    attempt: F,
) -> Result<T, ClientError>
where
    T: Send + 'static,
    F: Fn(SocketAddr) -> Fut,
    Fut: Future<Output = Result<T, ClientError>> + Send + 'static,
{
    let mut pending = addrs.into_iter();
    let mut running = JoinSet::new();
    let mut last_error = None;
    let start = |running: &mut JoinSet<_>, addr: SocketAddr| {
        let fut = attempt(addr);
        running.spawn(async move { (addr, fut.await) });
    };
    if let Some(first) = pending.next() {
        start(&mut running, first);
    }
    loop {
        let head_start = tokio::time::sleep(STAGGER);
        tokio::select! {
            joined = running.join_next() => match joined {
                None => {
                    // Nothing running and nothing left to start.
                    return Err(last_error.unwrap_or_else(|| ClientError::Unreachable {
                        relay: "relay".into(),
                        reason: "no address to try".into(),
                    }));
                }
                Some(Ok((addr, Ok(won)))) => {
                    failures.clear(&addr);
                    // Dropping the set abandons the attempts still running.
                    return Ok(won);
                }
                Some(Ok((addr, Err(e)))) => {
                    failures.record(addr);
                    last_error = Some(e);
                    if let Some(next) = pending.next() {
                        start(&mut running, next);
                    }
                }
                Some(Err(join)) => {
                    last_error = Some(ClientError::Protocol(format!("dialing failed: {join}")));
                    if let Some(next) = pending.next() {
                        start(&mut running, next);
                    }
                }
            },
            () = head_start, if pending.len() > 0 => {
                if let Some(next) = pending.next() {
                    start(&mut running, next);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn failed_addresses_go_last_and_the_rest_are_shuffled() {
        let failures = Failures::default();
        failures.record(addr(1));
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..200 {
            let o = order((1..=4).map(addr).collect(), &failures);
            assert_eq!(o.len(), 4);
            assert_eq!(o[3], addr(1), "the failed address is tried last");
            firsts.insert(o[0]);
        }
        assert_eq!(
            firsts.len(),
            3,
            "every healthy address comes first sometimes"
        );
        failures.clear(&addr(1));
        assert!(!failures.failed_lately(&addr(1), Instant::now()));
    }

    #[test]
    fn repeated_records_are_tried_once() {
        let o = order(vec![addr(1), addr(1), addr(2)], &Failures::default());
        assert_eq!(o.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_starts_the_next_address_at_once() {
        let failures = Failures::default();
        let started = tokio::time::Instant::now();
        let won = race(vec![addr(1), addr(2)], &failures, |a| async move {
            if a.port() == 1 {
                Err(ClientError::Unreachable {
                    relay: a.to_string(),
                    reason: "refused".into(),
                })
            } else {
                Ok(a.port())
            }
        })
        .await
        .unwrap();
        assert_eq!(won, 2);
        assert!(
            started.elapsed() < STAGGER,
            "no head start wasted on a failure"
        );
        assert!(failures.failed_lately(&addr(1), Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_address_costs_one_head_start() {
        let failures = Failures::default();
        let started = tokio::time::Instant::now();
        let won = race(vec![addr(1), addr(2)], &failures, |a| async move {
            if a.port() == 1 {
                // A dead relay: the handshake never answers.
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            Ok(a.port())
        })
        .await
        .unwrap();
        assert_eq!(won, 2);
        assert_eq!(started.elapsed(), STAGGER);
    }

    #[tokio::test]
    async fn all_failing_returns_the_last_failure() {
        let failures = Failures::default();
        let e = race(vec![addr(1), addr(2)], &failures, |a| async move {
            Err::<(), _>(ClientError::Unreachable {
                relay: a.to_string(),
                reason: "refused".into(),
            })
        })
        .await
        .unwrap_err();
        assert!(matches!(e, ClientError::Unreachable { .. }), "{e}");
    }
}
