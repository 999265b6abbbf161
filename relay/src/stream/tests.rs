//! The message stream machine driven by hand: frames in, outputs and
//! frames out, store results and durability decided by the test, time
//! moved by adding to an `Instant`. No store, no socket, no sleep.

use super::*;
use crate::config::RateConfig;
use crate::core::ConnAuth;
use crate::rate::Rates;

const MAILBOX: MailboxId = [9; 16];
const OTHER: MailboxId = [8; 16];

fn conn_with(auth: ConnAuth, rates: &RateConfig, t0: Instant) -> Arc<ConnState> {
    Arc::new(ConnState::new(auth, Rates::new(rates).connection(t0)))
}

fn conn(t0: Instant) -> Arc<ConnState> {
    conn_with(
        ConnAuth::authenticated(MAILBOX),
        &RateConfig::unlimited(),
        t0,
    )
}

fn body(f: In) -> Bytes {
    pb::ClientFrame { frame: Some(f) }.encode_to_vec().into()
}

fn send(request_id: u64) -> In {
    In::Send(pb::Send {
        request_id,
        mailbox_id: OTHER.to_vec().into(),
        token: vec![1; 32].into(),
        message_id: vec![request_id as u8; 16].into(),
        payload: b"sealed".to_vec().into(),
        ephemeral: false,
    })
}

fn ack(seqs: &[u64]) -> In {
    In::Ack(pb::Ack {
        seqs: seqs.to_vec(),
    })
}

fn subscribe(window: u32) -> In {
    In::Subscribe(pb::Subscribe { window })
}

fn envelope(seq: u64) -> pb::Envelope {
    pb::Envelope {
        seq,
        message_id: vec![seq as u8; 16].into(),
        received_at_ms: 1,
        payload: b"sealed".to_vec().into(),
        ephemeral: false,
    }
}

fn stored(request_id: u64, seq: u64) -> StoreOutcome {
    StoreOutcome::Sent {
        request_id,
        accepted: Accepted::Stored {
            mailbox: OTHER,
            seq,
            duplicate: false,
        },
        ephemeral: None,
    }
}

/// Every output the machine has now.
fn outputs(s: &mut MessageStream) -> Vec<Output> {
    std::iter::from_fn(|| s.poll()).collect()
}

/// Every frame that may leave now.
fn written(s: &mut MessageStream) -> Vec<Out> {
    std::iter::from_fn(|| s.poll_transmit())
        .filter_map(|f| f.frame)
        .collect()
}

fn store_batch(out: &[Output]) -> Vec<StoreOp> {
    out.iter()
        .find_map(|o| match o {
            Output::Store(b) => Some(b.clone()),
            _ => None,
        })
        .expect("a store batch")
}

fn ticket(out: &[Output]) -> Ticket {
    out.iter()
        .find_map(|o| match o {
            Output::AwaitDurable(t) => Some(*t),
            _ => None,
        })
        .expect("a durability wait")
}

fn fetch(out: &[Output]) -> Option<Fetch> {
    out.iter().find_map(|o| match o {
        Output::Fetch(f) => Some(*f),
        _ => None,
    })
}

fn result(f: &Out) -> &pb::SendResult {
    match f {
        Out::SendResult(r) => r,
        other => panic!("not a send result: {other:?}"),
    }
}

fn error_code(f: &Out) -> ErrorCode {
    match f {
        Out::Error(e) => WireError::from(e.clone()).code,
        other => panic!("not an error: {other:?}"),
    }
}

fn seqs(frames: &[Out]) -> Vec<u64> {
    frames
        .iter()
        .filter_map(|f| match f {
            Out::Envelope(e) => Some(e.seq),
            _ => None,
        })
        .collect()
}

#[test]
fn replies_leave_in_arrival_order_after_one_durability_wait() {
    let t0 = Instant::now();
    let mut s = MessageStream::new(conn(t0), 256);
    for id in 1..=4 {
        s.handle_frame(t0, body(send(id)));
    }
    let out = outputs(&mut s);
    assert_eq!(store_batch(&out).len(), 4, "one batch for all four");
    assert!(
        written(&mut s).is_empty(),
        "nothing before the store answers"
    );

    let ephemeral = envelope(0);
    s.handle_stored(vec![
        stored(1, 10),
        StoreOutcome::SendRefused {
            request_id: 2,
            error: WireError::new(ErrorCode::TokenInvalid, "no"),
        },
        StoreOutcome::Sent {
            request_id: 3,
            accepted: Accepted::Ephemeral { mailbox: OTHER },
            ephemeral: Some(ephemeral.clone()),
        },
        stored(4, 11),
    ]);
    let out = outputs(&mut s);
    assert!(out.contains(&Output::Ephemeral {
        mailbox: OTHER,
        envelope: ephemeral
    }));
    let waits: Vec<_> = out
        .iter()
        .filter(|o| matches!(o, Output::AwaitDurable(_)))
        .collect();
    assert_eq!(waits.len(), 1, "one wait per batch: {out:?}");
    // The recipient is woken once for the batch as it is stored, after the
    // flush has begun; its sender hears only once the flush is done.
    let wakes: Vec<_> = out
        .iter()
        .filter(|o| matches!(o, Output::Notify(_)))
        .collect();
    assert_eq!(wakes, vec![&Output::Notify(OTHER)], "one wake: {out:?}");
    assert!(matches!(out[0], Output::AwaitDurable(_)), "{out:?}");
    // The refusal and the ephemeral result are ready but wait their turn
    // behind the first stored send.
    assert!(written(&mut s).is_empty());

    s.handle_durable(ticket(&out), Ok(()));
    assert!(outputs(&mut s).is_empty(), "woken already");
    let frames = written(&mut s);
    let ids: Vec<u64> = frames.iter().map(|f| result(f).request_id).collect();
    assert_eq!(ids, vec![1, 2, 3, 4]);
    assert!(result(&frames[1]).error.is_some());
    // Stored at seqs 10 and 11, but a sender is never told a seq.
    for i in [0, 2, 3] {
        let r = result(&frames[i]);
        assert_eq!((r.seq, r.duplicate, r.error.as_ref()), (0, false, None));
    }
}

#[test]
fn a_sender_is_told_neither_the_seq_nor_that_it_repeated_itself() {
    let t0 = Instant::now();
    let mut s = MessageStream::new(conn(t0), 256);
    s.handle_frame(t0, body(send(1)));
    s.handle_frame(t0, body(send(2)));
    outputs(&mut s);
    let mut repeat = stored(2, 7);
    if let StoreOutcome::Sent {
        accepted: Accepted::Stored { duplicate, .. },
        ..
    } = &mut repeat
    {
        *duplicate = true;
    }
    s.handle_stored(vec![stored(1, 7), repeat]);
    let t = ticket(&outputs(&mut s));
    s.handle_durable(t, Ok(()));
    let frames = written(&mut s);
    assert_eq!(frames.len(), 2);
    // The first send and its repeat look the same to the sender.
    assert_eq!(result(&frames[0]).seq, 0);
    assert_eq!(
        (result(&frames[0]).seq, result(&frames[0]).duplicate),
        (result(&frames[1]).seq, result(&frames[1]).duplicate)
    );
}

#[test]
fn a_result_waits_for_a_durability_wait_begun_after_its_write() {
    let t0 = Instant::now();
    let mut s = MessageStream::new(conn(t0), 256);
    s.handle_frame(t0, body(send(1)));
    outputs(&mut s);
    s.handle_stored(vec![stored(1, 1)]);
    let first = ticket(&outputs(&mut s));

    // Stored while the first wait is under way: that wait may have begun
    // before this write, so it does not cover it.
    s.handle_frame(t0, body(send(2)));
    outputs(&mut s);
    s.handle_stored(vec![stored(2, 2)]);
    assert_eq!(
        outputs(&mut s),
        vec![Output::Notify(OTHER)],
        "one wait at a time"
    );

    s.handle_durable(first, Ok(()));
    let out = outputs(&mut s);
    let second = ticket(&out);
    assert_ne!(first, second);
    let frames = written(&mut s);
    assert_eq!(frames.len(), 1);
    assert_eq!(result(&frames[0]).request_id, 1);

    s.handle_durable(second, Ok(()));
    assert_eq!(result(&written(&mut s)[0]).request_id, 2);
}

#[test]
fn a_failed_flush_rewrites_results() {
    let t0 = Instant::now();
    let mut s = MessageStream::new(conn(t0), 256);
    s.handle_frame(t0, body(send(1)));
    s.handle_frame(t0, body(send(2)));
    outputs(&mut s);
    s.handle_stored(vec![stored(1, 1), stored(2, 2)]);
    let t = ticket(&outputs(&mut s));
    s.handle_durable(t, Err(StoreError::Unavailable("disk gone".into())));
    assert!(
        outputs(&mut s).is_empty(),
        "nothing more after a failed flush"
    );
    for f in written(&mut s) {
        let r = result(&f);
        assert_eq!((r.seq, r.duplicate), (0, false));
        let e = WireError::from(r.error.clone().unwrap());
        assert_eq!(e.code, ErrorCode::StorageUnavailable);
        assert_eq!(e.retry_after_ms, 1000);
    }
}

#[test]
fn over_the_rate_sends_are_refused_acks_applied_and_reading_pauses() {
    let t0 = Instant::now();
    let rates = RateConfig {
        frames_per_connection_per_sec: 1,
        frames_per_connection_burst: 2,
        ..RateConfig::unlimited()
    };
    let mut s = MessageStream::new(conn_with(ConnAuth::authenticated(MAILBOX), &rates, t0), 256);
    s.handle_frame(t0, body(send(1)));
    s.handle_frame(t0, body(ack(&[5])));
    assert!(s.wants_frames());
    assert_eq!(s.poll_timeout(), None);

    s.handle_frame(t0, body(send(2)));
    assert!(!s.wants_frames(), "over the rate, reading pauses");
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(1)));
    // A driver that still hands frames in: an ack over the rate is applied.
    s.handle_frame(t0, body(ack(&[6])));
    let batch = store_batch(&outputs(&mut s));
    assert_eq!(
        batch,
        vec![
            StoreOp::Send(match send(1) {
                In::Send(x) => x,
                _ => unreachable!(),
            }),
            StoreOp::Ack(vec![5]),
            StoreOp::Ack(vec![6]),
        ],
        "the refused send never reaches the store"
    );
    s.handle_stored(vec![
        stored(1, 1),
        StoreOutcome::Acked { seqs: vec![5] },
        StoreOutcome::Acked { seqs: vec![6] },
    ]);
    let t = ticket(&outputs(&mut s));
    s.handle_durable(t, Ok(()));
    let frames = written(&mut s);
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(result(&frames[0]).request_id, 1);
    let refused = result(&frames[1]);
    assert_eq!(refused.request_id, 2);
    let e = WireError::from(refused.error.clone().unwrap());
    assert_eq!(e.code, ErrorCode::RateLimited);

    s.handle_timeout(t0 + Duration::from_millis(999));
    assert!(!s.wants_frames());
    s.handle_timeout(t0 + Duration::from_secs(1));
    assert!(s.wants_frames());
    s.handle_frame(t0 + Duration::from_secs(1), body(send(3)));
    assert!(s.wants_frames(), "allowance is back");
}

#[test]
fn the_window_bounds_pushes_and_caught_up_comes_once() {
    let t0 = Instant::now();
    let mut s = MessageStream::new(conn(t0), 256);
    s.handle_frame(t0, body(subscribe(2)));
    let out = outputs(&mut s);
    assert_eq!(
        out[0],
        Output::Subscribe(MAILBOX),
        "subscribe before fetching"
    );
    let f = fetch(&out).unwrap();
    assert_eq!((f.mailbox, f.after_seq, f.limit), (MAILBOX, 0, 2));
    s.handle_fetched(t0, Ok(vec![envelope(1), envelope(2)]));
    assert_eq!(seqs(&written(&mut s)), vec![1, 2]);

    // The window is full: a wake-up waits for an ack.
    s.handle_wake();
    assert!(fetch(&outputs(&mut s)).is_none());
    s.handle_frame(t0, body(ack(&[1])));
    outputs(&mut s);
    s.handle_stored(vec![StoreOutcome::Acked { seqs: vec![1] }]);
    let f = fetch(&outputs(&mut s)).unwrap();
    assert_eq!((f.after_seq, f.limit), (2, 1));
    s.handle_fetched(t0, Ok(vec![]));
    let frames = written(&mut s);
    assert_eq!(frames, vec![Out::CaughtUp(pb::CaughtUp {})]);

    s.handle_wake();
    let f = fetch(&outputs(&mut s)).unwrap();
    s.handle_fetched(t0, Ok(vec![envelope(f.after_seq + 1)]));
    assert_eq!(seqs(&written(&mut s)), vec![3]);
    s.handle_frame(t0, body(ack(&[2, 3])));
    outputs(&mut s);
    s.handle_stored(vec![StoreOutcome::Acked { seqs: vec![2, 3] }]);
    // The last fetch came back full, so there may be more.
    let f = fetch(&outputs(&mut s)).unwrap();
    s.handle_fetched(t0, Ok(vec![]));
    assert!(written(&mut s).is_empty(), "CaughtUp only once");
    assert_eq!(f.after_seq, 3);
}

#[test]
fn a_backlog_drains_in_batches_within_the_window() {
    let t0 = Instant::now();
    let mut s = MessageStream::new(conn(t0), 300);
    s.handle_frame(t0, body(subscribe(0)));
    let f = fetch(&outputs(&mut s)).unwrap();
    assert_eq!(f.limit, DRAIN_BATCH);
    s.handle_fetched(t0, Ok((1..=128).map(envelope).collect()));
    let mut frames = written(&mut s);
    let f = fetch(&outputs(&mut s)).unwrap();
    assert_eq!((f.after_seq, f.limit), (128, DRAIN_BATCH));
    s.handle_fetched(t0, Ok((129..=256).map(envelope).collect()));
    frames.extend(written(&mut s));
    // 300 - 256 in flight.
    let f = fetch(&outputs(&mut s)).unwrap();
    assert_eq!((f.after_seq, f.limit), (256, 44));
    s.handle_fetched(t0, Ok((257..=260).map(envelope).collect()));
    frames.extend(written(&mut s));
    assert_eq!(seqs(&frames), (1..=260).collect::<Vec<_>>());
    assert_eq!(frames.last(), Some(&Out::CaughtUp(pb::CaughtUp {})));
}

#[test]
fn a_full_outgoing_queue_stops_fetching() {
    let t0 = Instant::now();
    let mut s = MessageStream::new(conn(t0), 4096);
    s.handle_frame(t0, body(subscribe(0)));
    outputs(&mut s);
    s.handle_fetched(t0, Ok((1..=128).map(envelope).collect()));
    outputs(&mut s);
    s.handle_fetched(t0, Ok((129..=256).map(envelope).collect()));
    // 256 frames queued unwritten: no more fetching, no ephemerals taken.
    assert!(fetch(&outputs(&mut s)).is_none());
    assert!(!s.wants_ephemeral());
    assert_eq!(written(&mut s).len(), 256);
    assert!(s.wants_ephemeral());
    assert_eq!(fetch(&outputs(&mut s)).unwrap().after_seq, 256);
}

#[test]
fn a_failed_fetch_is_retried_by_a_timer() {
    let t0 = Instant::now();
    let mut s = MessageStream::new(conn(t0), 256);
    s.handle_frame(t0, body(subscribe(0)));
    outputs(&mut s);
    let failed = WireError::new(ErrorCode::StorageUnavailable, "disk");
    s.handle_fetched(t0, Err(failed));
    assert!(fetch(&outputs(&mut s)).is_none());
    assert_eq!(s.poll_timeout(), Some(t0 + FETCH_RETRY));
    s.handle_wake();
    s.handle_timeout(t0 + FETCH_RETRY - Duration::from_millis(1));
    assert!(fetch(&outputs(&mut s)).is_none(), "not before the timer");
    s.handle_timeout(t0 + FETCH_RETRY);
    let f = fetch(&outputs(&mut s)).unwrap();
    assert_eq!(f.after_seq, 0);
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn one_subscription_per_connection() {
    let t0 = Instant::now();
    let c = conn(t0);
    let mut a = MessageStream::new(Arc::clone(&c), 256);
    let mut b = MessageStream::new(Arc::clone(&c), 256);
    a.handle_frame(t0, body(subscribe(0)));
    assert_eq!(outputs(&mut a)[0], Output::Subscribe(MAILBOX));
    // Again on the same stream: nothing changes, nothing is said.
    a.handle_frame(t0, body(subscribe(0)));
    assert!(outputs(&mut a).is_empty());
    assert!(written(&mut a).is_empty());

    b.handle_frame(t0, body(subscribe(0)));
    assert!(outputs(&mut b).is_empty());
    assert_eq!(error_code(&written(&mut b)[0]), ErrorCode::Unsupported);

    // When the subscribed stream ends, another may subscribe.
    a.handle_eof();
    assert_eq!(
        outputs(&mut a),
        vec![Output::Unsubscribe, Output::Close],
        "unsubscribe, then close once drained"
    );
    b.handle_frame(t0, body(subscribe(0)));
    assert_eq!(outputs(&mut b)[0], Output::Subscribe(MAILBOX));
    // Dropping a stream mid-way gives the subscription back too.
    drop(b);
    let mut d = MessageStream::new(c, 256);
    d.handle_frame(t0, body(subscribe(0)));
    assert_eq!(d.subscribed(), Some(MAILBOX));
}

#[test]
fn subscribing_needs_authentication() {
    let t0 = Instant::now();
    let c = conn_with(ConnAuth::default(), &RateConfig::unlimited(), t0);
    let mut s = MessageStream::new(Arc::clone(&c), 256);
    s.handle_frame(t0, body(subscribe(0)));
    assert!(outputs(&mut s).is_empty());
    assert_eq!(error_code(&written(&mut s)[0]), ErrorCode::NotAuthenticated);
    assert_eq!(s.subscribed(), None);
    // The refusal did not take the connection's subscription.
    assert!(c.claim_subscription());
}

#[test]
fn malformed_and_unknown_frames_are_answered_in_order() {
    let t0 = Instant::now();
    let mut s = MessageStream::new(conn(t0), 256);
    s.handle_frame(t0, body(send(1)));
    s.handle_frame(t0, Bytes::from_static(&[0xff, 0xff, 0xff]));
    s.handle_frame(t0, Bytes::new());
    // A frame of a kind this relay does not know (field 7).
    s.handle_frame(t0, Bytes::from_static(&[0x3a, 0x00]));
    outputs(&mut s);
    assert!(
        written(&mut s).is_empty(),
        "errors do not overtake a result"
    );
    s.handle_stored(vec![stored(1, 1)]);
    let t = ticket(&outputs(&mut s));
    s.handle_durable(t, Ok(()));
    let frames = written(&mut s);
    assert_eq!(result(&frames[0]).request_id, 1);
    let codes: Vec<_> = frames[1..].iter().map(error_code).collect();
    assert_eq!(
        codes,
        vec![
            ErrorCode::Malformed,
            ErrorCode::Unsupported,
            ErrorCode::Unsupported
        ]
    );
}

#[test]
fn an_oversize_frame_ends_reading_and_what_came_before_is_answered() {
    let t0 = Instant::now();
    let mut s = MessageStream::new(conn(t0), 256);
    s.handle_frame(t0, body(send(1)));
    s.handle_read_error(&ReadFrameError::Frame(FrameError::TooLarge {
        size: 10,
        max: 5,
    }));
    assert!(!s.wants_frames());
    let out = outputs(&mut s);
    assert!(
        !out.contains(&Output::Close),
        "the send is still unanswered"
    );
    s.handle_stored(vec![stored(1, 1)]);
    let out = outputs(&mut s);
    assert!(out.contains(&Output::Notify(OTHER)), "{out:?}");
    s.handle_durable(ticket(&out), Ok(()));
    let frames = written(&mut s);
    assert_eq!(result(&frames[0]).request_id, 1);
    assert_eq!(error_code(&frames[1]), ErrorCode::FrameTooLarge);
    assert_eq!(outputs(&mut s), vec![Output::Close]);
    assert!(outputs(&mut s).is_empty(), "Close comes once");
}

#[test]
fn ack_refusals_and_missing_outcomes_are_answered() {
    let t0 = Instant::now();
    let mut s = MessageStream::new(conn(t0), 256);
    s.handle_frame(t0, body(ack(&[1])));
    s.handle_frame(t0, body(send(2)));
    outputs(&mut s);
    let e = WireError::new(ErrorCode::NotAuthenticated, "authenticate first");
    // The driver lost the second outcome: answered, never left hanging.
    s.handle_stored(vec![StoreOutcome::AckRefused(e)]);
    let frames = written(&mut s);
    assert_eq!(error_code(&frames[0]), ErrorCode::NotAuthenticated);
    let e = WireError::from(result(&frames[1]).error.clone().unwrap());
    assert_eq!(e.code, ErrorCode::StorageUnavailable);
}

#[test]
fn ephemeral_envelopes_pass_through_outside_the_window() {
    let t0 = Instant::now();
    let mut s = MessageStream::new(conn(t0), 256);
    let mut eph = envelope(0);
    eph.ephemeral = true;
    // Not subscribed: nowhere to go.
    assert!(!s.wants_ephemeral());
    s.handle_ephemeral(eph.clone());
    assert!(written(&mut s).is_empty());

    s.handle_frame(t0, body(subscribe(1)));
    outputs(&mut s);
    s.handle_fetched(t0, Ok(vec![envelope(1)]));
    assert!(s.wants_ephemeral());
    s.handle_ephemeral(eph.clone());
    let frames = written(&mut s);
    assert_eq!(frames, vec![Out::Envelope(envelope(1)), Out::Envelope(eph)]);
    assert!(fetch(&outputs(&mut s)).is_none(), "the window stays full");
}

#[test]
fn reading_stops_when_answers_reach_their_bound() {
    let t0 = Instant::now();
    let mut s = MessageStream::new(conn(t0), 256);
    for id in 0..DURABILITY_QUEUE as u64 {
        assert!(s.wants_frames());
        s.handle_frame(t0, body(send(id)));
    }
    assert!(!s.wants_frames());
    // Batches go out one at a time, at most STORE_BATCH each, and the
    // first wait covers the first batch only.
    let mut stored_so_far = 0u64;
    let mut waits = 0;
    let mut out = outputs(&mut s);
    while let Some(batch) = out.iter().find_map(|o| match o {
        Output::Store(b) => Some(b.len()),
        _ => None,
    }) {
        assert_eq!(batch, STORE_BATCH);
        assert_eq!(
            out.iter().filter(|o| matches!(o, Output::Store(_))).count(),
            1
        );
        waits += out
            .iter()
            .filter(|o| matches!(o, Output::AwaitDurable(_)))
            .count();
        let outcomes = (0..batch as u64)
            .map(|i| stored(stored_so_far + i, stored_so_far + i + 1))
            .collect();
        stored_so_far += batch as u64;
        s.handle_stored(outcomes);
        out = outputs(&mut s);
    }
    waits += out
        .iter()
        .filter(|o| matches!(o, Output::AwaitDurable(_)))
        .count();
    assert_eq!(stored_so_far, DURABILITY_QUEUE as u64);
    assert_eq!(waits, 1, "one wait under way at a time");
    assert!(s.awaiting_durability());
    // The wait under way holds one batch; the rest still count.
    assert!(s.wants_frames());
}

#[test]
fn a_long_run_of_acks_alone_never_stops_reading() {
    let t0 = Instant::now();
    let mut s = MessageStream::new(
        conn_with(
            ConnAuth::authenticated(MAILBOX),
            &RateConfig::unlimited(),
            t0,
        ),
        256,
    );
    // Far more acks than the answer bound, with no push or reply between
    // them: each is answered with nothing, and must not count forever.
    for i in 0..3_000u64 {
        assert!(s.wants_frames(), "reading stopped after {i} acks");
        s.handle_frame(t0, body(ack(&[i + 1])));
        for out in outputs(&mut s) {
            if let Output::Store(ops) = out {
                let outcomes = ops
                    .into_iter()
                    .map(|op| match op {
                        StoreOp::Ack(seqs) => StoreOutcome::Acked { seqs },
                        other => panic!("{other:?}"),
                    })
                    .collect();
                s.handle_stored(outcomes);
            }
        }
    }
    assert!(s.wants_frames());
    assert!(!s.has_transmit());
}

#[test]
fn a_blocked_senders_send_is_answered_after_the_same_durability_wait() {
    let t0 = Instant::now();
    let mut s = MessageStream::new(conn(t0), 256);
    s.handle_frame(t0, body(send(1)));
    s.handle_frame(t0, body(send(2)));
    outputs(&mut s);
    s.handle_stored(vec![
        StoreOutcome::Sent {
            request_id: 1,
            accepted: Accepted::Discarded { ephemeral: false },
            ephemeral: None,
        },
        StoreOutcome::Sent {
            request_id: 2,
            accepted: Accepted::Discarded { ephemeral: true },
            ephemeral: None,
        },
    ]);
    let out = outputs(&mut s);
    assert!(
        written(&mut s).is_empty(),
        "held for durability like a stored send"
    );
    s.handle_durable(ticket(&out), Ok(()));
    assert!(outputs(&mut s).is_empty(), "nobody to wake");
    let frames = written(&mut s);
    let answers: Vec<_> = frames
        .iter()
        .map(|f| {
            let r = result(f);
            (r.request_id, r.seq, r.duplicate, r.error.is_some())
        })
        .collect();
    assert_eq!(answers, vec![(1, 0, false, false), (2, 0, false, false)]);
}

#[test]
fn a_stream_abandoned_before_its_wakes_ran_hands_them_back() {
    let t0 = Instant::now();
    let mut s = MessageStream::new(conn(t0), 256);
    s.handle_frame(t0, body(send(1)));
    s.handle_frame(t0, body(send(2)));
    outputs(&mut s);
    // The sender's stream dies as its batch comes back: what the batch
    // stored still owes its recipient one wake, which the driver runs.
    s.handle_stored(vec![stored(1, 10), stored(2, 11)]);
    assert_eq!(s.abandon(), vec![Output::Notify(OTHER)]);
    assert!(s.abandon().is_empty(), "handed back once");
}

#[test]
fn recipients_are_woken_before_the_flush_ends() {
    let t0 = Instant::now();
    let mut s = MessageStream::new(conn(t0), 256);
    s.handle_frame(t0, body(send(1)));
    outputs(&mut s);
    s.handle_stored(vec![stored(1, 10)]);
    let out = outputs(&mut s);
    assert!(
        matches!(out[..], [Output::AwaitDurable(_), Output::Notify(OTHER)]),
        "{out:?}"
    );
    assert!(written(&mut s).is_empty(), "the sender waits for the flush");
    s.handle_durable(ticket(&out), Ok(()));
    assert_eq!(result(&written(&mut s)[0]).request_id, 1);
}
