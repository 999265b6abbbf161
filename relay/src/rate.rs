//! Rate limits, with governor's GCRA limiters rather than hand-rolled
//! buckets: connection attempts (globally and per source address, with QUIC
//! address validation demanded first when attempts spike), registrations
//! per source address, sends per send token, and frames per connection.
//! Every refusal is `RATE_LIMITED` with the time after which the same
//! request would be allowed, which clients honour when backing off.
//!
//! No limiter reads a real clock of its own: the shared ones read the
//! relay's [`Clock`] (governor takes a custom clock), and a connection's
//! frame limiter is told the time by whoever checks it, so the message
//! stream's state machine decides with the `now` it was given.

use crate::clock::{Clock, SystemClock};
use crate::config::RateConfig;
use crate::store::TokenHash;
use governor::clock::Clock as _;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{NotUntil, Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tern_protocol::{ErrorCode, WireError};

/// governor's view of the relay's [`Clock`]: its monotonic reading.
#[derive(Clone)]
pub struct RelayTime(Arc<dyn Clock>);

impl governor::clock::Clock for RelayTime {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        // Saturate: governor's own conversion panics past 584 years, and a
        // test clock may be set anywhere.
        let nanos = self.0.monotonic().as_nanos();
        Nanos::from(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// A clock that reads whatever it was last told, never going back; a
/// connection's limiter is driven by the `now` its streams are handed.
#[derive(Debug)]
pub(crate) struct DrivenTime {
    epoch: Instant,
    nanos: AtomicU64,
}

impl DrivenTime {
    fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            nanos: AtomicU64::new(0),
        }
    }

    /// Move to `now`. Streams of one connection report times concurrently;
    /// keeping the latest means an older report is judged a little late,
    /// never early.
    fn set(&self, now: Instant) {
        let n = now.saturating_duration_since(self.epoch).as_nanos();
        self.nanos
            .fetch_max(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

impl governor::clock::Clock for DrivenTime {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.nanos.load(Ordering::Relaxed))
    }
}

type Direct = RateLimiter<NotKeyed, InMemoryState, RelayTime, NoOpMiddleware<Nanos>>;
type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, RelayTime, NoOpMiddleware<Nanos>>;
type PerConnection = RateLimiter<NotKeyed, InMemoryState, DrivenTime, NoOpMiddleware<Nanos>>;

/// What to do with a new connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead with the handshake.
    Accept,
    /// Attempts are spiking: make the client prove its address first (a
    /// QUIC Retry costs it one round trip and defeats spoofed floods).
    Retry,
    /// Over the limit: refuse; the client backs off and tries again.
    Refuse,
}

fn quota(per_period: u32, burst: u32, per_minute: bool) -> Option<Quota> {
    let rate = NonZeroU32::new(per_period)?;
    let q = if per_minute {
        Quota::per_minute(rate)
    } else {
        Quota::per_second(rate)
    };
    Some(match NonZeroU32::new(burst) {
        Some(b) => q.allow_burst(b),
        None => q,
    })
}

fn direct(q: Option<Quota>, clock: &RelayTime) -> Option<Direct> {
    q.map(|q| RateLimiter::new(q, InMemoryState::default(), clock.clone()))
}

fn keyed<K: std::hash::Hash + Eq + Clone>(q: Option<Quota>, clock: &RelayTime) -> Option<Keyed<K>> {
    q.map(|q| RateLimiter::new(q, DefaultKeyedStateStore::default(), clock.clone()))
}

fn limited(what: &str, until: &NotUntil<Nanos>, now: Nanos) -> WireError {
    let wait = until.wait_time_from(now);
    WireError::new(
        ErrorCode::RateLimited,
        format!("too many {what}; slow down"),
    )
    .retry_after(wait.as_millis().max(1) as u64)
}

/// The key a per-address limit counts `ip` under: an IPv4 address (also
/// one mapped into IPv6) as it is, an IPv6 address as its network of
/// `v6_prefix` bits, since one host is commonly handed a whole /64.
pub fn address_key(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u32::from(v6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        },
    }
}

/// The relay's shared limiters. A rate of 0 in the config turns a limit off.
pub struct Rates {
    handshakes: Option<Direct>,
    retry_above: Option<Direct>,
    connections_per_ip: Option<Keyed<IpAddr>>,
    registrations_per_ip: Option<Keyed<IpAddr>>,
    sends_per_token: Option<Keyed<TokenHash>>,
    frames_per_connection: Option<Quota>,
    clock: RelayTime,
    /// IPv6 addresses are keyed on this prefix ([`address_key`]).
    v6_prefix: u8,
}

/// Connections open at once per IP address.
pub struct ConnectionSlots {
    open: std::sync::Mutex<std::collections::HashMap<IpAddr, u32>>,
    max: u32,
    v6_prefix: u8,
}

/// One open connection's place; frees it when dropped.
pub struct Slot<'a> {
    slots: &'a ConnectionSlots,
    ip: IpAddr,
}

impl ConnectionSlots {
    /// At most `max` connections per address (0: no limit), IPv6 ones
    /// counted per network of `v6_prefix` bits.
    pub fn new(max: u32, v6_prefix: u8) -> Self {
        Self {
            open: Default::default(),
            max,
            v6_prefix,
        }
    }

    /// Take a place for a connection from `ip`, if one is free.
    pub fn acquire(&self, ip: IpAddr) -> Option<Slot<'_>> {
        let ip = address_key(ip, self.v6_prefix);
        let mut open = self.open.lock().ok()?;
        let n = open.entry(ip).or_insert(0);
        if self.max != 0 && *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot { slots: self, ip })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Ok(mut open) = self.slots.open.lock() {
            if let Some(n) = open.get_mut(&self.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    open.remove(&self.ip);
                }
            }
        }
    }
}

/// One connection's own limiter of frames and requests, shared by its
/// streams and told the time by each check.
pub struct ConnectionRate(Option<PerConnection>);

impl ConnectionRate {
    /// Count `n` more units at `now` (a multi-recipient send's extra
    /// targets), at most the whole burst; `Err` when over the limit.
    pub fn check_n_at(&self, now: Instant, n: u32) -> Result<(), WireError> {
        let (Some(l), Some(n)) = (&self.0, std::num::NonZeroU32::new(n)) else {
            return Ok(());
        };
        l.clock().set(now);
        let checked = match l.check_n(n) {
            Ok(r) => r,
            // More than the burst: charge the whole burst instead.
            Err(governor::InsufficientCapacity(cap)) => match std::num::NonZeroU32::new(cap) {
                Some(cap) => l.check_n(cap).unwrap_or(Ok(())),
                None => Ok(()),
            },
        };
        checked.map_err(|u| limited("frames on this connection", &u, l.clock().now()))
    }

    /// Count one frame or request at `now`; `Err` when over the limit.
    pub fn check_at(&self, now: Instant) -> Result<(), WireError> {
        match &self.0 {
            Some(l) => {
                l.clock().set(now);
                l.check()
                    .map_err(|u| limited("frames on this connection", &u, l.clock().now()))
            }
            None => Ok(()),
        }
    }
}

impl Rates {
    /// Limiters as configured, on the system clock.
    pub fn new(c: &RateConfig) -> Self {
        Self::with_clock(c, Arc::new(SystemClock))
    }

    /// Limiters as configured, measuring time by `clock`.
    pub fn with_clock(c: &RateConfig, clock: Arc<dyn Clock>) -> Self {
        let t = RelayTime(clock);
        Self {
            handshakes: direct(quota(c.handshakes_per_sec, c.handshakes_burst, false), &t),
            retry_above: direct(
                quota(
                    c.retry_above_handshakes_per_sec,
                    c.retry_above_handshakes_per_sec,
                    false,
                ),
                &t,
            ),
            connections_per_ip: keyed(
                quota(
                    c.connections_per_ip_per_sec,
                    c.connections_per_ip_burst,
                    false,
                ),
                &t,
            ),
            registrations_per_ip: keyed(
                quota(
                    c.registrations_per_ip_per_min,
                    c.registrations_per_ip_burst,
                    true,
                ),
                &t,
            ),
            sends_per_token: keyed(
                quota(c.sends_per_token_per_sec, c.sends_per_token_burst, false),
                &t,
            ),
            frames_per_connection: quota(
                c.frames_per_connection_per_sec,
                c.frames_per_connection_burst,
                false,
            ),
            clock: t,
            v6_prefix: 128,
        }
    }

    /// The same limiters, counting IPv6 addresses per network of
    /// `v6_prefix` bits ([`address_key`]).
    pub fn keyed_on_prefix(mut self, v6_prefix: u8) -> Self {
        self.v6_prefix = v6_prefix;
        self
    }

    /// Decide on a connection attempt from `ip` (`validated`: the client
    /// already proved its address with a Retry token).
    pub fn admit(&self, ip: IpAddr, validated: bool) -> Admission {
        let spiking = self
            .retry_above
            .as_ref()
            .is_some_and(|l| l.check().is_err());
        if spiking && !validated {
            return Admission::Retry;
        }
        if self.handshakes.as_ref().is_some_and(|l| l.check().is_err()) {
            return Admission::Refuse;
        }
        if self
            .connections_per_ip
            .as_ref()
            .is_some_and(|l| l.check_key(&address_key(ip, self.v6_prefix)).is_err())
        {
            return Admission::Refuse;
        }
        Admission::Accept
    }

    /// Count a registration from `ip`.
    pub fn registration(&self, ip: Option<IpAddr>) -> Result<(), WireError> {
        match (&self.registrations_per_ip, ip) {
            (Some(l), Some(ip)) => l
                .check_key(&address_key(ip, self.v6_prefix))
                .map_err(|u| limited("registrations from this address", &u, self.clock.now())),
            _ => Ok(()),
        }
    }

    /// Count a send with the token whose hash is `token`.
    pub fn send(&self, token: &TokenHash) -> Result<(), WireError> {
        match &self.sends_per_token {
            Some(l) => l
                .check_key(token)
                .map_err(|u| limited("sends with this token", &u, self.clock.now())),
            None => Ok(()),
        }
    }

    /// A fresh limiter for one connection opened at `epoch`; its checks
    /// are told the time (see [`ConnectionRate::check_at`]).
    pub fn connection(&self, epoch: Instant) -> ConnectionRate {
        ConnectionRate(
            self.frames_per_connection
                .map(|q| RateLimiter::new(q, InMemoryState::default(), DrivenTime::new(epoch))),
        )
    }

    /// Forget keys that are back to full allowance, so the keyed tables stay
    /// as small as the set of recently active addresses and tokens.
    pub fn forget_idle(&self) {
        if let Some(l) = &self.connections_per_ip {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.registrations_per_ip {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.sends_per_token {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RateConfig {
        RateConfig {
            handshakes_per_sec: 1000,
            handshakes_burst: 1000,
            retry_above_handshakes_per_sec: 5,
            connections_per_ip_per_sec: 1,
            connections_per_ip_burst: 3,
            registrations_per_ip_per_min: 1,
            registrations_per_ip_burst: 2,
            sends_per_token_per_sec: 1,
            sends_per_token_burst: 4,
            frames_per_connection_per_sec: 1,
            frames_per_connection_burst: 10,
        }
    }

    #[test]
    fn per_address_connections_are_limited_per_address() {
        let r = Rates::new(&config());
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let got: Vec<_> = (0..4).map(|_| r.admit(a, true)).collect();
        assert_eq!(got[..3], [Admission::Accept; 3]);
        assert_eq!(got[3], Admission::Refuse);
        assert_eq!(r.admit(b, true), Admission::Accept);
    }

    #[test]
    fn a_spike_demands_address_validation_first() {
        let r = Rates::new(&config());
        let ips: Vec<IpAddr> = (0..20)
            .map(|i| format!("10.0.1.{i}").parse().unwrap())
            .collect();
        let got: Vec<_> = ips.iter().map(|ip| r.admit(*ip, false)).collect();
        assert!(got[..5].iter().all(|a| *a == Admission::Accept), "{got:?}");
        assert!(got[5..].iter().all(|a| *a == Admission::Retry), "{got:?}");
        // A client that came back with a Retry token is let through.
        assert_eq!(r.admit(ips[19], true), Admission::Accept);
    }

    #[test]
    fn refusals_are_typed_and_say_when_to_retry() {
        let r = Rates::new(&config());
        let token = [9u8; 32];
        for _ in 0..4 {
            r.send(&token).unwrap();
        }
        let e = r.send(&token).unwrap_err();
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert!(e.retry_after_ms > 0 && e.retry_after_ms <= 1000, "{e:?}");
        r.send(&[8u8; 32]).unwrap();

        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        r.registration(Some(ip)).unwrap();
        r.registration(Some(ip)).unwrap();
        assert_eq!(
            r.registration(Some(ip)).unwrap_err().code,
            ErrorCode::RateLimited
        );

        let t0 = Instant::now();
        let conn = r.connection(t0);
        for _ in 0..10 {
            conn.check_at(t0).unwrap();
        }
        let e = conn.check_at(t0).unwrap_err();
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert_eq!(e.retry_after_ms, 1000);
    }

    #[test]
    fn limits_measure_time_by_the_clock_they_are_given() {
        let clock = crate::clock::ManualClock::new(1_000_000);
        let r = Rates::with_clock(&config(), Arc::new(clock.clone()));
        let token = [7u8; 32];
        for _ in 0..4 {
            r.send(&token).unwrap();
        }
        let e = r.send(&token).unwrap_err();
        assert_eq!(e.retry_after_ms, 1000, "{e:?}");
        // No real time passes; the relay's clock does.
        clock.advance(1000);
        r.send(&token).unwrap();
        assert!(r.send(&token).is_err());

        let t0 = Instant::now();
        let conn = r.connection(t0);
        for _ in 0..10 {
            conn.check_at(t0).unwrap();
        }
        let later = t0 + std::time::Duration::from_millis(400);
        let e = conn.check_at(later).unwrap_err();
        assert_eq!(e.retry_after_ms, 600, "{e:?}");
        conn.check_at(t0 + std::time::Duration::from_secs(1))
            .unwrap();
        // A stream reporting an older time is judged at the latest one.
        assert!(conn.check_at(t0).is_err());
    }

    #[test]
    fn connection_slots_are_freed_when_dropped() {
        let slots = ConnectionSlots::new(2, 64);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = slots.acquire(ip).unwrap();
        let _b = slots.acquire(ip).unwrap();
        assert!(slots.acquire(ip).is_none());
        assert!(slots.acquire("10.0.0.2".parse().unwrap()).is_some());
        drop(a);
        assert!(slots.acquire(ip).is_some());
    }

    #[test]
    fn ipv6_addresses_count_per_prefix_and_ipv4_per_address() {
        let slots = ConnectionSlots::new(2, 64);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let _a = slots.acquire(ip("2001:db8:1:2::1")).unwrap();
        let _b = slots.acquire(ip("2001:db8:1:2:ffff::9")).unwrap();
        assert!(
            slots.acquire(ip("2001:db8:1:2:1234::1")).is_none(),
            "the same /64 is one address"
        );
        assert!(slots.acquire(ip("2001:db8:1:3::1")).is_some());
        let _c = slots.acquire(ip("10.0.0.1")).unwrap();
        let _d = slots.acquire(ip("10.0.0.1")).unwrap();
        assert!(
            slots.acquire(ip("::ffff:10.0.0.1")).is_none(),
            "mapped IPv4"
        );
        assert!(slots.acquire(ip("10.0.0.2")).is_some());

        assert_eq!(address_key(ip("2001:db8::1"), 128), ip("2001:db8::1"));
        assert_eq!(address_key(ip("2001:db8::1"), 0), ip("::"));
        assert_eq!(
            address_key(ip("2001:db8:aa:bb::1"), 48),
            ip("2001:db8:aa::")
        );

        let r = Rates::new(&config()).keyed_on_prefix(64);
        let got: Vec<_> = (0..4)
            .map(|i| r.admit(ip(&format!("2001:db8:0:1::{i}")), true))
            .collect();
        assert_eq!(got[3], Admission::Refuse, "a /64 shares one burst");
    }

    #[test]
    fn zero_turns_a_limit_off() {
        let r = Rates::new(&RateConfig::unlimited());
        for _ in 0..10_000 {
            r.send(&[1; 32]).unwrap();
            assert_eq!(
                r.admit("10.0.0.1".parse().unwrap(), false),
                Admission::Accept
            );
        }
    }
}
