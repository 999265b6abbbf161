//! The push bounds in bytes, driven by hand: fetches sized to what fits the
//! stream's own bound and the relay-wide budget, room freed only when the
//! writer reports bytes written, a starved stream resuming when another
//! lets go, and a replaced subscription told and finished. No store, no
//! socket, no sleep.

use super::*;
use crate::config::RateConfig;
use crate::core::ConnAuth;
use crate::rate::Rates;

const MAILBOX: MailboxId = [9; 16];
/// The unit fetches are sized in: one envelope frame at its largest.
const UNIT: usize = 1_000;

fn stream(t0: Instant, stream_units: usize, relay: &Arc<PushBudget>) -> MessageStream {
    let conn = Arc::new(ConnState::new(
        ConnAuth::authenticated(MAILBOX),
        Rates::new(&RateConfig::unlimited()).connection(t0),
    ));
    MessageStream::new(conn, 4096).with_limits(PushLimits {
        stream_bytes: stream_units * UNIT,
        envelope_frame_bytes: UNIT,
        relay: Arc::clone(relay),
    })
}

fn subscribe() -> Bytes {
    pb::ClientFrame {
        frame: Some(In::Subscribe(pb::Subscribe { window: 0 })),
    }
    .encode_to_vec()
    .into()
}

/// An envelope whose frame is a little under [`UNIT`].
fn big(seq: u64) -> pb::Envelope {
    pb::Envelope {
        seq,
        message_id: vec![1; 16].into(),
        received_at_ms: 1,
        payload: vec![0xab; UNIT - 100].into(),
        ephemeral: false,
    }
}

fn fetch_limit(s: &mut MessageStream) -> Option<usize> {
    std::iter::from_fn(|| s.poll()).find_map(|o| match o {
        Output::Fetch(f) => Some(f.limit),
        _ => None,
    })
}

/// Hand out every frame that may leave; returns the push bytes handed out.
fn transmit(s: &mut MessageStream) -> usize {
    std::iter::from_fn(|| s.poll_transmit())
        .filter(MessageStream::is_push)
        .map(|f| f.encoded_len())
        .sum()
}

#[test]
fn fetches_fit_the_streams_bytes_and_unwritten_bytes_hold_the_room() {
    let t0 = Instant::now();
    let relay = PushBudget::new(0);
    let mut s = stream(t0, 10, &relay);
    s.handle_frame(t0, subscribe());
    assert_eq!(
        fetch_limit(&mut s),
        Some(10),
        "ten envelopes at their largest"
    );
    s.handle_fetched(t0, Ok((1..=10).map(big).collect()));
    // Handed to the writer but not written: still held, so no fetch, and
    // no ephemeral envelope fits either.
    let handed = transmit(&mut s);
    assert!(handed > 9 * UNIT, "{handed}");
    assert_eq!(fetch_limit(&mut s), None);
    s.handle_ephemeral(big(0));
    assert_eq!(
        transmit(&mut s),
        0,
        "an ephemeral envelope over the bound is dropped"
    );
    // Half written: room for what that freed, no more.
    s.handle_written(handed / 2);
    let limit = fetch_limit(&mut s).unwrap();
    assert!((4..=5).contains(&limit), "{limit}");
    s.handle_fetched(t0, Ok(Vec::new()));
    transmit(&mut s);
    s.handle_written(usize::MAX);
    s.handle_wake();
    assert_eq!(fetch_limit(&mut s), Some(10), "all of it free again");
}

#[test]
fn the_relay_wide_budget_is_shared_starves_and_comes_back() {
    let t0 = Instant::now();
    let relay = PushBudget::new(15 * UNIT);
    let mut a = stream(t0, 10, &relay);
    let mut b = stream(t0, 10, &relay);
    let mut c = stream(t0, 10, &relay);
    for s in [&mut a, &mut b, &mut c] {
        s.handle_frame(t0, subscribe());
    }
    assert_eq!(fetch_limit(&mut a), Some(10));
    assert_eq!(fetch_limit(&mut b), Some(5), "what is left relay-wide");
    // The budget is spent, but a stream holding nothing still gets one
    // envelope, so never-reading streams cannot starve everyone else.
    assert_eq!(fetch_limit(&mut c), Some(1));
    c.handle_fetched(t0, Ok(vec![big(1)]));
    assert_eq!(fetch_limit(&mut c), None, "holding one, it waits");
    assert!(c.starved(), "the driver is told to look again");
    a.handle_fetched(t0, Ok((1..=10).map(big).collect()));
    transmit(&mut a);
    // A stream that ends gives back everything it held, written or not.
    drop(a);
    assert_eq!(
        fetch_limit(&mut c),
        Some(9),
        "its own bound, less the one held"
    );
    assert!(!c.starved());
    drop((b, c));
    assert_eq!(relay.used(), 0, "nothing leaks");
}

#[test]
fn a_replaced_subscription_is_told_and_its_stream_finishes() {
    let t0 = Instant::now();
    let relay = PushBudget::new(0);
    let mut s = stream(t0, 10, &relay);
    s.handle_frame(t0, subscribe());
    assert!(fetch_limit(&mut s).is_some());
    s.handle_replaced();
    let out: Vec<_> = std::iter::from_fn(|| s.poll()).collect();
    assert!(out.contains(&Output::Unsubscribe), "{out:?}");
    assert_eq!(relay.used(), 0, "the fetch's reservation is given back");
    let frames: Vec<_> = std::iter::from_fn(|| s.poll_transmit())
        .filter_map(|f| f.frame)
        .collect();
    match &frames[..] {
        [Out::Error(e)] => assert_eq!(
            WireError::from(e.clone()).code,
            ErrorCode::SubscriptionReplaced
        ),
        other => panic!("{other:?}"),
    }
    assert!(!s.wants_frames(), "reading ends");
    assert_eq!(s.poll(), Some(Output::Close));
    assert_eq!(s.subscribed(), None);
}
