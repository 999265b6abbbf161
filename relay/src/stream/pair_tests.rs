//! A relay core (the in-memory engine, manual clock, seeded entropy)
//! and message streams wired together in one process, after quinn-proto's
//! `Pair`: a small loop does what `connection.rs` does, with no sockets,
//! no threads and no sleeps, so whole exchanges are deterministic.

use super::*;
use crate::clock::ManualClock;
use crate::config::{Limits, RateConfig};
use crate::core::{ConnAuth, RelayCore};
use crate::entropy::SeededEntropy;
use crate::rate::Rates;
use crate::store::MemoryStore;
use ed25519_dalek::{Signer, SigningKey};
use pb::control_request::Request;
use pb::control_response::Response;
use std::collections::HashMap;

const EXPORTER: [u8; 32] = [3; 32];

struct Peer {
    conn: Arc<ConnState>,
    stream: MessageStream,
    written: Vec<Out>,
}

struct Pair {
    core: RelayCore<MemoryStore, ManualClock>,
    peers: Vec<Peer>,
    /// The hub: which peer subscribed to which mailbox.
    subs: HashMap<MailboxId, usize>,
    t0: Instant,
    /// Store fetches run for subscriptions.
    fetches: usize,
}

impl Pair {
    fn new() -> Self {
        let clock = ManualClock::new(1_700_000_000_000);
        let core = RelayCore::new(
            Arc::new(MemoryStore::new()),
            clock.clone(),
            Limits::default(),
            // Unlimited: the manual clock never gives allowance back.
            Rates::with_clock(&RateConfig::unlimited(), Arc::new(clock)),
        )
        .with_entropy(SeededEntropy::new(11));
        Self {
            core,
            peers: Vec::new(),
            subs: HashMap::new(),
            t0: Instant::now(),
            fetches: 0,
        }
    }

    /// A new connection with one message stream; returns its index.
    fn connect(&mut self) -> usize {
        let rate = Rates::new(&RateConfig::unlimited()).connection(self.t0);
        let conn = Arc::new(ConnState::new(ConnAuth::default(), rate));
        let stream = MessageStream::new(Arc::clone(&conn), 256);
        self.peers.push(Peer {
            conn,
            stream,
            written: Vec::new(),
        });
        self.peers.len() - 1
    }

    fn control(&self, peer: usize, r: Request) -> Response {
        let mut auth = self.peers[peer].conn.auth.lock().unwrap();
        let answer = self.core.control(
            &mut auth,
            &EXPORTER,
            pb::ControlRequest { request: Some(r) },
        );
        answer.response.response.unwrap()
    }

    /// Register a mailbox, authenticate `peer` for it, and mint a token.
    fn login(&mut self, peer: usize, key: u8) -> (MailboxId, Vec<u8>) {
        let key = SigningKey::from_bytes(&[key; 32]);
        let auth_key = key.verifying_key().to_bytes().to_vec().into();
        let Response::Registered(r) =
            self.control(peer, Request::Register(pb::Register { auth_key }))
        else {
            panic!()
        };
        let mailbox: MailboxId = r.mailbox_id[..].try_into().unwrap();
        let Response::Challenge(c) =
            self.control(peer, Request::Challenge(pb::ChallengeRequest {}))
        else {
            panic!()
        };
        let sig = key.sign(&tern_protocol::auth_signed_bytes(
            &EXPORTER, &c.nonce, &mailbox,
        ));
        let auth = pb::Authenticate {
            mailbox_id: mailbox.to_vec().into(),
            nonce: c.nonce,
            signature: sig.to_bytes().to_vec().into(),
        };
        assert!(matches!(
            self.control(peer, Request::Authenticate(auth)),
            Response::Authenticated(_)
        ));
        let Response::TokenCreated(t) =
            self.control(peer, Request::CreateToken(pb::CreateToken {}))
        else {
            panic!()
        };
        (mailbox, t.token.to_vec())
    }

    fn frame(&mut self, peer: usize, f: In) {
        let body = pb::ClientFrame { frame: Some(f) }.encode_to_vec().into();
        self.peers[peer].stream.handle_frame(self.t0, body);
    }

    /// Run every output and write every frame until nothing moves.
    async fn drive(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.peers.len() {
                while let Some(o) = self.peers[i].stream.poll() {
                    moved = true;
                    self.run(i, o).await;
                }
                while let Some(f) = self.peers[i].stream.poll_transmit() {
                    moved = true;
                    self.peers[i].written.extend(f.frame);
                }
            }
            if !moved {
                return;
            }
        }
    }

    async fn run(&mut self, i: usize, o: Output) {
        match o {
            Output::Subscribe(m) => {
                self.subs.insert(m, i);
            }
            Output::Unsubscribe => self.subs.retain(|_, p| *p != i),
            Output::Store(ops) => {
                let outcomes = run_store(&self.core, &self.peers[i].conn, ops);
                self.peers[i].stream.handle_stored(outcomes);
            }
            Output::AwaitDurable(t) => {
                let r = self.core.durable().await;
                self.peers[i].stream.handle_durable(t, r);
            }
            Output::Notify(m) => {
                if let Some(&p) = self.subs.get(&m) {
                    self.peers[p].stream.handle_wake();
                }
            }
            Output::Hand { targets, envelope } => {
                for (mailbox, seq) in targets {
                    if let Some(&p) = self.subs.get(&mailbox) {
                        let mut envelope = envelope.clone();
                        envelope.seq = seq;
                        self.peers[p].stream.handle_handed(envelope);
                    }
                }
            }
            Output::Ephemeral { mailbox, envelope } => {
                if let Some(&p) = self.subs.get(&mailbox) {
                    self.peers[p].stream.handle_ephemeral(envelope);
                }
            }
            Output::Fetch(f) => {
                self.fetches += 1;
                let got = self.core.fetch(&f.mailbox, f.after_seq, f.limit);
                self.peers[i].stream.handle_fetched(self.t0, got);
            }
            Output::Close => {}
        }
    }

    fn take_written(&mut self, peer: usize) -> Vec<Out> {
        std::mem::take(&mut self.peers[peer].written)
    }
}

fn send(mailbox: &MailboxId, token: &[u8], id: u64, ephemeral: bool) -> In {
    let mut message_id = [0u8; 16];
    message_id[..8].copy_from_slice(&id.to_be_bytes());
    In::Send(pb::Send {
        request_id: id,
        mailbox_id: mailbox.to_vec().into(),
        token: token.to_vec().into(),
        message_id: message_id.to_vec().into(),
        payload: format!("sealed {id}").into_bytes().into(),
        ephemeral,
    })
}

fn pushed(frames: &[Out]) -> Vec<u64> {
    frames
        .iter()
        .filter_map(|f| match f {
            Out::Envelope(e) => Some(e.seq),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn sends_are_stored_pushed_within_the_window_and_acked() {
    let mut p = Pair::new();
    let (alice, bob) = (p.connect(), p.connect());
    let (bob_box, token) = p.login(bob, 2);

    p.frame(bob, In::Subscribe(pb::Subscribe { window: 2 }));
    p.drive().await;
    assert_eq!(p.take_written(bob), vec![Out::CaughtUp(pb::CaughtUp {})]);

    for id in 1..=3 {
        p.frame(alice, send(&bob_box, &token, id, false));
    }
    // A send with a made-up token is refused like a revoked one.
    p.frame(alice, send(&bob_box, &[7; 32], 4, false));
    p.drive().await;
    let results: Vec<_> = p
        .take_written(alice)
        .into_iter()
        .map(|f| match f {
            Out::SendResult(r) => (r.request_id, r.seq, r.error.map(|e| e.code)),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        results,
        vec![
            (1, 0, None),
            (2, 0, None),
            (3, 0, None),
            (4, 0, Some(ErrorCode::TokenInvalid as i32))
        ]
    );
    assert_eq!(pushed(&p.take_written(bob)), vec![1, 2], "the window is 2");

    p.frame(bob, In::Ack(pb::Ack { seqs: vec![1] }));
    p.drive().await;
    assert_eq!(pushed(&p.take_written(bob)), vec![3]);
    p.frame(bob, In::Ack(pb::Ack { seqs: vec![2, 3] }));
    p.drive().await;
    assert!(p.take_written(bob).is_empty());
    assert!(
        p.core.fetch(&bob_box, 0, 10).unwrap().is_empty(),
        "acked is gone"
    );
}

#[tokio::test]
async fn ephemeral_sends_reach_a_subscriber_and_are_never_stored() {
    let mut p = Pair::new();
    let (alice, bob) = (p.connect(), p.connect());
    let (bob_box, token) = p.login(bob, 2);
    // Nobody subscribed: dropped, yet the sender is told it was accepted.
    p.frame(alice, send(&bob_box, &token, 1, true));
    p.drive().await;
    p.frame(bob, In::Subscribe(pb::Subscribe { window: 0 }));
    p.drive().await;
    assert_eq!(p.take_written(bob), vec![Out::CaughtUp(pb::CaughtUp {})]);

    p.frame(alice, send(&bob_box, &token, 2, true));
    p.drive().await;
    let got = p.take_written(bob);
    let [Out::Envelope(e)] = &got[..] else {
        panic!("{got:?}")
    };
    assert!(e.ephemeral);
    assert_eq!(&e.payload[..], b"sealed 2");
    let results = p.take_written(alice);
    assert_eq!(results.len(), 2);
    assert!(results
        .iter()
        .all(|f| matches!(f, Out::SendResult(r) if r.seq == 0 && r.error.is_none())));
    assert!(p.core.fetch(&bob_box, 0, 10).unwrap().is_empty());
}

#[tokio::test]
async fn a_backlog_is_drained_then_caught_up_is_said() {
    let mut p = Pair::new();
    let (alice, bob) = (p.connect(), p.connect());
    let (bob_box, token) = p.login(bob, 2);
    for id in 1..=300 {
        p.frame(alice, send(&bob_box, &token, id, false));
    }
    p.drive().await;
    let results = p.take_written(alice);
    assert_eq!(results.len(), 300);
    assert!(results.iter().all(
        |f| matches!(f, Out::SendResult(r) if r.seq == 0 && !r.duplicate && r.error.is_none())
    ));

    p.frame(bob, In::Subscribe(pb::Subscribe { window: 1000 }));
    p.drive().await;
    let got = p.take_written(bob);
    assert_eq!(pushed(&got), (1..=300).collect::<Vec<_>>());
    assert_eq!(got.last(), Some(&Out::CaughtUp(pb::CaughtUp {})));
    // An ack from a connection that is not the mailbox's is refused.
    p.frame(alice, In::Ack(pb::Ack { seqs: vec![1] }));
    p.drive().await;
    let got = p.take_written(alice);
    assert!(matches!(&got[..], [Out::Error(e)] if e.code == ErrorCode::NotAuthenticated as i32));
}

fn send_many(id: u64, targets: &[(MailboxId, Vec<u8>)], ephemeral: bool) -> In {
    In::SendMany(pb::SendMany {
        request_id: id,
        message_id: vec![id as u8; 16].into(),
        payload: b"sealed once".to_vec().into(),
        ephemeral,
        targets: targets
            .iter()
            .map(|(m, t)| pb::SendTarget {
                mailbox_id: m.to_vec().into(),
                token: t.clone().into(),
            })
            .collect(),
    })
}

#[tokio::test]
async fn a_send_many_reaches_every_subscriber_once_and_answers_per_target() {
    let mut p = Pair::new();
    let alice = p.connect();
    let members: Vec<usize> = (0..3).map(|_| p.connect()).collect();
    let mut targets = Vec::new();
    for (k, &m) in members.iter().enumerate() {
        targets.push(p.login(m, 10 + k as u8));
        p.frame(m, In::Subscribe(pb::Subscribe { window: 0 }));
    }
    p.drive().await;
    for &m in &members {
        assert_eq!(p.take_written(m), vec![Out::CaughtUp(pb::CaughtUp {})]);
    }
    let mut with_bad = targets.clone();
    with_bad[1].1 = vec![7; 32];
    p.frame(alice, send(&targets[0].0, &targets[0].1, 1, false));
    p.frame(alice, send_many(2, &with_bad, false));
    p.frame(alice, send_many(2, &targets, false));
    p.drive().await;
    let answers = p.take_written(alice);
    let [Out::SendResult(first), Out::SendManyResult(r), Out::SendManyResult(again)] = &answers[..]
    else {
        panic!("{answers:?}")
    };
    assert_eq!(first.request_id, 1);
    let codes: Vec<_> = r
        .results
        .iter()
        .map(|t| t.error.as_ref().map(|e| e.code))
        .collect();
    assert_eq!(
        codes,
        vec![None, Some(ErrorCode::TokenInvalid as i32), None]
    );
    // The retry with the good token: answered as a success everywhere (no
    // `duplicate` leaks), stored once where it was already held.
    let dups: Vec<_> = again
        .results
        .iter()
        .map(|t| (t.duplicate, t.error.is_none()))
        .collect();
    assert_eq!(dups, vec![(false, true), (false, true), (false, true)]);
    // Each member got the group envelope once (member 0 after the Send).
    let got: Vec<Vec<u64>> = members
        .iter()
        .map(|&m| pushed(&p.take_written(m)))
        .collect();
    assert_eq!(got, vec![vec![1, 2], vec![1], vec![1]]);
    let stored = p.core.fetch(&targets[2].0, 0, 10).unwrap();
    assert_eq!(&stored[0].payload[..], b"sealed once");
}

#[tokio::test]
async fn a_drained_subscriber_pushes_a_handed_envelope_without_reading_the_store() {
    let mut p = Pair::new();
    let (alice, bob) = (p.connect(), p.connect());
    let target = p.login(bob, 2);
    p.frame(bob, In::Subscribe(pb::Subscribe { window: 2 }));
    p.drive().await;
    assert_eq!(p.take_written(bob), vec![Out::CaughtUp(pb::CaughtUp {})]);
    let fetches = p.fetches;
    p.frame(alice, send_many(1, std::slice::from_ref(&target), false));
    p.drive().await;
    // Pushed as the store holds it, without a fetch.
    let stored = p.core.fetch(&target.0, 0, 10).unwrap();
    assert_eq!(p.take_written(bob), vec![Out::Envelope(stored[0].clone())]);
    assert_eq!(p.fetches, fetches, "handed over, not fetched");
    // Two more: the window (2) takes one; the other waits in the store
    // and is fetched once the acks open the window.
    p.frame(alice, send_many(2, std::slice::from_ref(&target), false));
    p.frame(alice, send_many(3, std::slice::from_ref(&target), false));
    p.drive().await;
    assert_eq!(pushed(&p.take_written(bob)), vec![2]);
    p.frame(bob, In::Ack(pb::Ack { seqs: vec![1, 2] }));
    p.drive().await;
    assert_eq!(pushed(&p.take_written(bob)), vec![3]);
    assert_eq!(p.fetches, fetches + 1);
    // A single send still wakes, and is fetched: nothing is pushed twice.
    p.frame(bob, In::Ack(pb::Ack { seqs: vec![3] }));
    p.frame(alice, send(&target.0, &target.1, 4, false));
    p.frame(alice, send_many(5, std::slice::from_ref(&target), false));
    p.drive().await;
    assert_eq!(pushed(&p.take_written(bob)), vec![4, 5]);
}

#[tokio::test]
async fn an_ephemeral_send_many_reaches_subscribers_and_is_stored_nowhere() {
    let mut p = Pair::new();
    let alice = p.connect();
    let (bob, carol) = (p.connect(), p.connect());
    let targets = vec![p.login(bob, 2), p.login(carol, 3)];
    // Only bob is connected and subscribed.
    p.frame(bob, In::Subscribe(pb::Subscribe { window: 0 }));
    p.drive().await;
    p.take_written(bob);
    p.frame(alice, send_many(5, &targets, true));
    p.drive().await;
    let got = p.take_written(bob);
    assert!(matches!(&got[..], [Out::Envelope(e)] if e.ephemeral && e.seq == 0));
    let answers = p.take_written(alice);
    assert!(matches!(&answers[..], [Out::SendManyResult(r)]
        if r.results.len() == 2 && r.results.iter().all(|t| t.error.is_none())));
    for (m, _) in &targets {
        assert!(p.core.fetch(m, 0, 10).unwrap().is_empty());
    }
}
