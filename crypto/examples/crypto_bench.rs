//! Microbenchmark of the per-message crypto, 200-byte messages.
//!
//! `cargo run -p tern-crypto --release --example crypto_bench [N]`
//!
//! Prints µs per operation, the median of 5 runs of N operations each
//! (default N = 2000). Informational only: nothing asserts on timings.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use tern_crypto::{open, seal, DeviceAccount, OlmCiphertext, PairSession, SealKey};

const RUNS: usize = 5;
const MSG_LEN: usize = 200;

fn median_us_per_op(n: usize, mut run: impl FnMut() -> f64) -> f64 {
    let mut samples: Vec<f64> = (0..RUNS).map(|_| run() / n as f64).collect();
    samples.sort_by(f64::total_cmp);
    samples[RUNS / 2]
}

fn time(f: impl FnOnce()) -> f64 {
    let start = Instant::now();
    f();
    start.elapsed().as_secs_f64() * 1e6
}

fn sessions() -> (PairSession, PairSession) {
    let alice = DeviceAccount::new();
    let mut bob = DeviceAccount::new();
    let otk = bob.new_one_time_key();
    let mut a = alice.start_session(&bob.identity_key(), &otk).unwrap();
    let first = a.encrypt(b"hello");
    let (mut b, _) = bob
        .accept_session(&alice.identity_key(), &first.body)
        .unwrap();
    a.decrypt(&b.encrypt(b"ack")).unwrap();
    (a, b)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let msg = [0x42u8; MSG_LEN];
    let key = SealKey::generate();
    let public = key.public();

    let seal_us = median_us_per_op(n, || {
        time(|| {
            for _ in 0..n {
                black_box(seal(black_box(&public), black_box(&msg)));
            }
        })
    });

    let sealed: Vec<Vec<u8>> = (0..n).map(|_| seal(&public, &msg)).collect();
    let open_us = median_us_per_op(n, || {
        time(|| {
            for s in &sealed {
                black_box(open(&key, black_box(s)).unwrap());
            }
        })
    });

    let (mut a, _) = sessions();
    let encrypt_us = median_us_per_op(n, || {
        time(|| {
            for _ in 0..n {
                black_box(a.encrypt(black_box(&msg)));
            }
        })
    });

    // Each run decrypts a fresh batch, all on one chain, in order.
    let mut decrypt_samples = Vec::new();
    for _ in 0..RUNS {
        let (mut a, mut b) = sessions();
        let batch: Vec<OlmCiphertext> = (0..n).map(|_| a.encrypt(&msg)).collect();
        decrypt_samples.push(
            time(|| {
                for c in &batch {
                    black_box(b.decrypt(black_box(c)).unwrap());
                }
            }) / n as f64,
        );
    }
    decrypt_samples.sort_by(f64::total_cmp);
    let decrypt_us = decrypt_samples[RUNS / 2];

    // A conversation: every message changes direction, so each side does a
    // Diffie-Hellman ratchet step per message (two per round trip).
    let rounds = (n / 10).max(1);
    let (mut a, mut b) = sessions();
    let round_trip_us = median_us_per_op(rounds, || {
        time(|| {
            for _ in 0..rounds {
                let c = a.encrypt(&msg);
                black_box(b.decrypt(&c).unwrap());
                let c = b.encrypt(&msg);
                black_box(a.decrypt(&c).unwrap());
            }
        })
    });

    println!("tern-crypto microbenchmark: {MSG_LEN}-byte messages, median of {RUNS} runs");
    println!("  seal                         {seal_us:8.1} µs/op  ({n} ops/run)");
    println!("  open                         {open_us:8.1} µs/op  ({n} ops/run)");
    println!("  olm encrypt (same chain)     {encrypt_us:8.1} µs/op  ({n} ops/run)");
    println!("  olm decrypt (same chain)     {decrypt_us:8.1} µs/op  ({n} ops/run)");
    println!("  olm round trip (2 ratchets)  {round_trip_us:8.1} µs/op  ({rounds} ops/run)");
}
