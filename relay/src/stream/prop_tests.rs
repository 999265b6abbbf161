//! Property test of the message stream machine: random interleavings of
//! frames, store results, durability results, fetches and writes never
//! break its promises. Every send is answered exactly once and in arrival
//! order; a stored send's result leaves only after a durability wait that
//! began after its write and ended, and says `StorageUnavailable` if that
//! wait failed; pushes never exceed the window. Multi-recipient sends
//! (`SendMany`) are mixed in and held to the same promises.

use super::*;
use crate::config::RateConfig;
use crate::core::ConnAuth;
use crate::rate::Rates;
use proptest::prelude::*;
use std::collections::{BTreeSet, HashMap};

const MAILBOX: MailboxId = [9; 16];
const WINDOW: u32 = 5;

#[derive(Debug, Clone)]
enum Action {
    Send,
    SendMany,
    Ack,
    Garbage,
    Subscribe,
    Wake,
    /// Answer the store batch out: per op, 0 stored, 1 refused, 2 ephemeral.
    Store(Vec<u8>),
    Durable(bool),
    Fetched(usize),
    Write(usize),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => Just(Action::Send),
        2 => Just(Action::SendMany),
        2 => Just(Action::Ack),
        1 => Just(Action::Garbage),
        1 => Just(Action::Subscribe),
        1 => Just(Action::Wake),
        3 => proptest::collection::vec(0u8..3, 0..8).prop_map(Action::Store),
        3 => any::<bool>().prop_map(Action::Durable),
        2 => (0usize..8).prop_map(Action::Fetched),
        3 => (0usize..6).prop_map(Action::Write),
    ]
}

/// The test's side of the stream: what it asked for and what it saw.
#[derive(Default)]
struct World {
    step: u64,
    next_id: u64,
    batch: Option<Vec<StoreOp>>,
    wait: Option<(Ticket, u64)>,
    fetch: Option<Fetch>,
    next_seq: u64,
    /// Step at which each stored send's write came back.
    written_at: HashMap<u64, u64>,
    /// (begun, ended, ok) of every finished wait.
    waits: Vec<(u64, u64, bool)>,
    answered: Vec<u64>,
    pushed: BTreeSet<u64>,
    acked: BTreeSet<u64>,
}

impl World {
    fn run_outputs(&mut self, s: &mut MessageStream) {
        while let Some(o) = s.poll() {
            self.step += 1;
            match o {
                Output::Store(ops) => {
                    assert!(self.batch.is_none(), "two store batches out");
                    self.batch = Some(ops);
                }
                Output::AwaitDurable(t) => {
                    assert!(self.wait.is_none(), "two waits out");
                    self.wait = Some((t, self.step));
                }
                Output::Fetch(f) => {
                    assert!(self.fetch.is_none(), "two fetches out");
                    self.fetch = Some(f);
                }
                _ => {}
            }
        }
    }

    fn write(&mut self, s: &mut MessageStream, n: usize) {
        for _ in 0..n {
            let Some(f) = s.poll_transmit() else { return };
            self.step += 1;
            match f.frame {
                Some(Out::SendResult(r)) => {
                    if let Some(written) = self.written_at.get(&r.request_id) {
                        let cover = self
                            .waits
                            .iter()
                            .find(|(begun, _, _)| begun > written)
                            .unwrap_or_else(|| panic!("{} left before a wait", r.request_id));
                        let failed = !cover.2;
                        let unavailable = r.error.as_ref().map(|e| e.code)
                            == Some(ErrorCode::StorageUnavailable as i32);
                        assert_eq!(failed, unavailable, "{r:?}");
                        // Never a seq for the sender, failed or not.
                        assert_eq!((r.seq, r.duplicate), (0, false));
                    }
                    self.answered.push(r.request_id);
                }
                Some(Out::SendManyResult(r)) => {
                    if let Some(written) = self.written_at.get(&r.request_id) {
                        let cover = self
                            .waits
                            .iter()
                            .find(|(begun, _, _)| begun > written)
                            .unwrap_or_else(|| panic!("{} left before a wait", r.request_id));
                        let unavailable = r.results.iter().all(|t| {
                            t.error.as_ref().map(|e| e.code)
                                == Some(ErrorCode::StorageUnavailable as i32)
                        });
                        assert_eq!(!cover.2, unavailable, "{r:?}");
                        assert_eq!(r.results.len(), 2);
                    }
                    self.answered.push(r.request_id);
                }
                Some(Out::Envelope(e)) => {
                    assert!(self.pushed.insert(e.seq), "pushed twice");
                }
                _ => {}
            }
        }
    }

    fn store(&mut self, s: &mut MessageStream, kinds: &[u8]) {
        let Some(ops) = self.batch.take() else { return };
        self.step += 1;
        let outcomes = ops
            .into_iter()
            .enumerate()
            .map(|(i, op)| match (op, kinds.get(i).copied().unwrap_or(0)) {
                (StoreOp::Send(x), 1) => StoreOutcome::SendRefused {
                    request_id: x.request_id,
                    error: WireError::new(ErrorCode::TokenInvalid, "no"),
                },
                (StoreOp::Send(x), 2) => StoreOutcome::Sent {
                    request_id: x.request_id,
                    accepted: Accepted::Ephemeral { mailbox: MAILBOX },
                    ephemeral: None,
                },
                (StoreOp::Send(x), _) => {
                    self.written_at.insert(x.request_id, self.step);
                    StoreOutcome::Sent {
                        request_id: x.request_id,
                        accepted: Accepted::Stored {
                            mailbox: MAILBOX,
                            seq: x.request_id + 1,
                            duplicate: false,
                        },
                        ephemeral: None,
                    }
                }
                (StoreOp::Ack(seqs), _) => {
                    self.acked.extend(seqs.iter().copied());
                    StoreOutcome::Acked { seqs }
                }
                (StoreOp::SendMany(x), 1) => StoreOutcome::SendManyRefused {
                    request_id: x.request_id,
                    error: WireError::new(ErrorCode::Malformed, "no"),
                },
                // Every target refused: nothing stored, nothing to wait for.
                (StoreOp::SendMany(x), 2) => StoreOutcome::SentMany {
                    request_id: x.request_id,
                    sent: SentMany {
                        results: vec![
                            pb::TargetResult::of(Err(WireError::new(
                                ErrorCode::TokenInvalid,
                                "no"
                            )));
                            2
                        ],
                        ..SentMany::default()
                    },
                    ephemeral: None,
                },
                (StoreOp::SendMany(x), _) => {
                    self.written_at.insert(x.request_id, self.step);
                    StoreOutcome::SentMany {
                        request_id: x.request_id,
                        sent: SentMany {
                            results: vec![pb::TargetResult::of(Ok(false)); 2],
                            stored: vec![MAILBOX, [8; 16]],
                            ephemeral: Vec::new(),
                            discarded: 0,
                            handoff: None,
                        },
                        ephemeral: None,
                    }
                }
            })
            .collect();
        s.handle_stored(outcomes);
    }

    fn durable(&mut self, s: &mut MessageStream, ok: bool) {
        let Some((t, begun)) = self.wait.take() else {
            return;
        };
        self.step += 1;
        self.waits.push((begun, self.step, ok));
        let result = if ok {
            Ok(())
        } else {
            Err(StoreError::Unavailable("disk".into()))
        };
        s.handle_durable(t, result);
    }

    fn frame(&mut self, s: &mut MessageStream, now: Instant, f: In) {
        s.handle_frame(
            now,
            pb::ClientFrame { frame: Some(f) }.encode_to_vec().into(),
        );
    }
}

proptest! {
    #[test]
    fn promises_hold_under_any_interleaving(actions in proptest::collection::vec(action(), 1..80)) {
        let t0 = Instant::now();
        let conn = Arc::new(ConnState::new(
            ConnAuth::authenticated(MAILBOX),
            Rates::new(&RateConfig::unlimited()).connection(t0),
        ));
        let mut s = MessageStream::new(conn, WINDOW);
        let mut w = World::default();
        for a in actions {
            match a {
                Action::Send => {
                    let id = w.next_id;
                    w.next_id += 1;
                    w.frame(&mut s, t0, In::Send(pb::Send {
                        request_id: id,
                        ..Default::default()
                    }));
                }
                Action::SendMany => {
                    let id = w.next_id;
                    w.next_id += 1;
                    w.frame(&mut s, t0, In::SendMany(pb::SendMany {
                        request_id: id,
                        ..Default::default()
                    }));
                }
                Action::Ack => {
                    let seqs: Vec<u64> = w.pushed.difference(&w.acked).copied().collect();
                    w.frame(&mut s, t0, In::Ack(pb::Ack { seqs }));
                }
                Action::Garbage => s.handle_frame(t0, Bytes::from_static(&[0xff, 0x01])),
                Action::Subscribe => w.frame(&mut s, t0, In::Subscribe(pb::Subscribe { window: 0 })),
                Action::Wake => s.handle_wake(),
                Action::Store(kinds) => w.store(&mut s, &kinds),
                Action::Durable(ok) => w.durable(&mut s, ok),
                Action::Fetched(n) => {
                    if let Some(f) = w.fetch.take() {
                        prop_assert_eq!(f.after_seq, w.next_seq);
                        let envs = (0..n.min(f.limit))
                            .map(|_| {
                                w.next_seq += 1;
                                pb::Envelope { seq: w.next_seq, ..Default::default() }
                            })
                            .collect::<Vec<_>>();
                        s.handle_fetched(t0, Ok(envs));
                    }
                }
                Action::Write(n) => w.write(&mut s, n),
            }
            w.run_outputs(&mut s);
            let unacked = w.pushed.difference(&w.acked).count();
            prop_assert!(unacked <= WINDOW as usize, "{unacked} unacked over the window");
        }
        // Finish everything out, then every send has its one answer.
        s.handle_eof();
        for _ in 0..10_000 {
            w.run_outputs(&mut s);
            w.store(&mut s, &[]);
            w.durable(&mut s, true);
            w.run_outputs(&mut s);
            w.write(&mut s, usize::MAX);
            if w.batch.is_none() && w.wait.is_none() && !s.has_transmit() {
                break;
            }
        }
        prop_assert_eq!(w.answered, (0..w.next_id).collect::<Vec<_>>());
    }
}
