//! The machine with multi-recipient sends (`SendMany`) among single ones:
//! replies still leave in arrival order, one durability wait covers a
//! batch whatever it holds, every reached mailbox is woken once after it,
//! a failed flush rewrites only the targets that were stored, and an
//! ephemeral SendMany is handed to each recipient without a wait.

use super::*;
use crate::config::RateConfig;
use crate::core::ConnAuth;
use crate::rate::Rates;

const A: MailboxId = [1; 16];
const B: MailboxId = [2; 16];
const C: MailboxId = [3; 16];

fn conn(t0: Instant, rates: &RateConfig) -> Arc<ConnState> {
    Arc::new(ConnState::new(
        ConnAuth::authenticated([9; 16]),
        Rates::new(rates).connection(t0),
    ))
}

fn body(f: In) -> Bytes {
    pb::ClientFrame { frame: Some(f) }.encode_to_vec().into()
}

fn send(request_id: u64) -> In {
    In::Send(pb::Send {
        request_id,
        mailbox_id: A.to_vec().into(),
        token: vec![1; 32].into(),
        message_id: vec![request_id as u8; 16].into(),
        payload: b"sealed".to_vec().into(),
        ephemeral: false,
    })
}

fn send_many(request_id: u64, ephemeral: bool) -> In {
    In::SendMany(pb::SendMany {
        request_id,
        message_id: vec![request_id as u8; 16].into(),
        payload: b"sealed".to_vec().into(),
        ephemeral,
        targets: [A, B, C]
            .iter()
            .map(|m| pb::SendTarget {
                mailbox_id: m.to_vec().into(),
                token: vec![1; 32].into(),
            })
            .collect(),
    })
}

fn ok() -> pb::TargetResult {
    pb::TargetResult::of(Ok(false))
}

fn refused() -> pb::TargetResult {
    pb::TargetResult::of(Err(WireError::new(ErrorCode::TokenInvalid, "no")))
}

fn sent_many(request_id: u64, stored: Vec<MailboxId>) -> StoreOutcome {
    StoreOutcome::SentMany {
        request_id,
        sent: SentMany {
            results: vec![ok(), refused(), ok()],
            stored,
            ephemeral: Vec::new(),
            discarded: 0,
            handoff: None,
        },
        ephemeral: None,
    }
}

fn stored_send(request_id: u64) -> StoreOutcome {
    StoreOutcome::Sent {
        request_id,
        accepted: Accepted::Stored {
            mailbox: A,
            seq: request_id,
            duplicate: false,
        },
        ephemeral: None,
    }
}

fn outputs(s: &mut MessageStream) -> Vec<Output> {
    std::iter::from_fn(|| s.poll()).collect()
}

fn written(s: &mut MessageStream) -> Vec<Out> {
    std::iter::from_fn(|| s.poll_transmit())
        .filter_map(|f| f.frame)
        .collect()
}

fn waits(out: &[Output]) -> Vec<Ticket> {
    out.iter()
        .filter_map(|o| match o {
            Output::AwaitDurable(t) => Some(*t),
            _ => None,
        })
        .collect()
}

fn notified(out: &[Output]) -> Vec<MailboxId> {
    out.iter()
        .filter_map(|o| match o {
            Output::Notify(m) => Some(*m),
            _ => None,
        })
        .collect()
}

fn ids(frames: &[Out]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| match f {
            Out::SendResult(r) => r.request_id,
            Out::SendManyResult(r) => r.request_id,
            other => panic!("not a result: {other:?}"),
        })
        .collect()
}

fn many(f: &Out) -> &pb::SendManyResult {
    match f {
        Out::SendManyResult(r) => r,
        other => panic!("not a send-many result: {other:?}"),
    }
}

fn codes(r: &pb::SendManyResult) -> Vec<Option<ErrorCode>> {
    r.results
        .iter()
        .map(|t| t.error.clone().map(|e| WireError::from(e).code))
        .collect()
}

#[test]
fn mixed_sends_wake_each_mailbox_once_and_answer_in_order_after_one_wait() {
    let t0 = Instant::now();
    let mut s = MessageStream::new(conn(t0, &RateConfig::unlimited()), 256);
    s.handle_frame(t0, body(send(1)));
    s.handle_frame(t0, body(send_many(2, false)));
    s.handle_frame(t0, body(send(3)));
    s.handle_frame(t0, body(send_many(4, false)));
    let out = outputs(&mut s);
    let Some(Output::Store(batch)) = out.first() else {
        panic!("{out:?}")
    };
    assert_eq!(batch.len(), 4);
    assert!(matches!(batch[1], StoreOp::SendMany(_)));
    s.handle_stored(vec![
        stored_send(1),
        sent_many(2, vec![A, C]),
        stored_send(3),
        // Nothing stored (every target refused): ready at once, in order.
        StoreOutcome::SentMany {
            request_id: 4,
            sent: SentMany {
                results: vec![refused(), refused(), refused()],
                stored: Vec::new(),
                ephemeral: Vec::new(),
                discarded: 0,
                handoff: None,
            },
            ephemeral: None,
        },
    ]);
    let out = outputs(&mut s);
    let tickets = waits(&out);
    assert_eq!(tickets.len(), 1, "one wait for the batch: {out:?}");
    // Recipients are woken as the batch is stored, the senders answered
    // once it is durable.
    assert_eq!(notified(&out), vec![A, C], "each mailbox once, in order");
    assert!(written(&mut s).is_empty(), "nothing before durability");

    s.handle_durable(tickets[0], Ok(()));
    assert!(notified(&outputs(&mut s)).is_empty(), "woken already");
    let frames = written(&mut s);
    assert_eq!(ids(&frames), vec![1, 2, 3, 4]);
    use ErrorCode::TokenInvalid;
    assert_eq!(
        codes(many(&frames[1])),
        vec![None, Some(TokenInvalid), None]
    );
    assert_eq!(codes(many(&frames[3])), vec![Some(TokenInvalid); 3]);
}

#[test]
fn a_failed_flush_rewrites_only_the_stored_targets() {
    let t0 = Instant::now();
    let mut s = MessageStream::new(conn(t0, &RateConfig::unlimited()), 256);
    s.handle_frame(t0, body(send_many(7, false)));
    outputs(&mut s);
    s.handle_stored(vec![sent_many(7, vec![A, C])]);
    let t = waits(&outputs(&mut s))[0];
    s.handle_durable(t, Err(StoreError::Unavailable("disk".into())));
    assert!(notified(&outputs(&mut s)).is_empty());
    let frames = written(&mut s);
    use ErrorCode::*;
    assert_eq!(
        codes(many(&frames[0])),
        vec![
            Some(StorageUnavailable),
            Some(TokenInvalid),
            Some(StorageUnavailable)
        ]
    );
}

#[test]
fn an_ephemeral_send_many_is_handed_to_each_recipient_without_a_wait() {
    let t0 = Instant::now();
    let mut s = MessageStream::new(conn(t0, &RateConfig::unlimited()), 256);
    s.handle_frame(t0, body(send_many(5, true)));
    outputs(&mut s);
    let env = pb::Envelope {
        ephemeral: true,
        payload: b"sealed".to_vec().into(),
        ..pb::Envelope::default()
    };
    s.handle_stored(vec![StoreOutcome::SentMany {
        request_id: 5,
        sent: SentMany {
            results: vec![ok(), refused(), ok()],
            stored: Vec::new(),
            ephemeral: vec![A, C],
            discarded: 0,
            handoff: None,
        },
        ephemeral: Some(env.clone()),
    }]);
    let out = outputs(&mut s);
    assert!(waits(&out).is_empty());
    let handed: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Ephemeral { mailbox, envelope } => Some((*mailbox, envelope.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(handed, vec![(A, env.clone()), (C, env)]);
    assert_eq!(ids(&written(&mut s)), vec![5]);
}

#[test]
fn over_the_connection_rate_a_send_many_pays_per_target_and_is_refused_whole() {
    let t0 = Instant::now();
    let rates = RateConfig {
        frames_per_connection_per_sec: 1,
        frames_per_connection_burst: 3,
        ..RateConfig::unlimited()
    };
    let mut s = MessageStream::new(conn(t0, &rates), 256);
    // The first SendMany, with three targets, uses the whole burst of
    // three: one unit per target.
    s.handle_frame(t0, body(send_many(1, false)));
    s.handle_frame(t0, body(send_many(2, false)));
    let out = outputs(&mut s);
    let Some(Output::Store(batch)) = out.first() else {
        panic!("{out:?}")
    };
    assert_eq!(batch.len(), 1, "only the first reaches the store");
    s.handle_stored(vec![sent_many(1, vec![A])]);
    let t = waits(&outputs(&mut s))[0];
    s.handle_durable(t, Ok(()));
    outputs(&mut s);
    let frames = written(&mut s);
    assert_eq!(ids(&frames), vec![1, 2]);
    let refused = many(&frames[1]);
    assert!(refused.results.is_empty());
    let code = refused.error.clone().map(|e| WireError::from(e).code);
    assert_eq!(code, Some(ErrorCode::RateLimited));
}

#[test]
fn a_missing_outcome_answers_a_send_many_as_storage_unavailable() {
    let t0 = Instant::now();
    let mut s = MessageStream::new(conn(t0, &RateConfig::unlimited()), 256);
    s.handle_frame(t0, body(send_many(3, false)));
    outputs(&mut s);
    s.handle_stored(Vec::new());
    let frames = written(&mut s);
    let code = many(&frames[0])
        .error
        .clone()
        .map(|e| WireError::from(e).code);
    assert_eq!(code, Some(ErrorCode::StorageUnavailable));
}
