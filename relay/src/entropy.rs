//! Randomness, injected. The core draws mailbox ids, challenge nonces and
//! send tokens from an [`Entropy`], so production uses the operating
//! system's generator and tests a seeded one that repeats run after run.

use rand::{RngCore, SeedableRng};
use std::sync::Mutex;

/// A source of random bytes for ids, nonces and tokens.
pub trait Entropy: Send + Sync + 'static {
    /// Fill `dest` with random bytes.
    fn fill(&self, dest: &mut [u8]);
}

/// rand's thread-local generator: a CSPRNG seeded and reseeded from the
/// operating system. What the relay uses outside tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill(&self, dest: &mut [u8]) {
        rand::thread_rng().fill_bytes(dest);
    }
}

/// A generator seeded with a fixed number, for tests: the same seed gives
/// the same mailbox ids, nonces and tokens. Never for production.
#[derive(Debug)]
pub struct SeededEntropy(Mutex<rand::rngs::StdRng>);

impl SeededEntropy {
    /// A generator that always starts from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)))
    }
}

impl Entropy for SeededEntropy {
    fn fill(&self, dest: &mut [u8]) {
        // A panic elsewhere cannot leave a generator half-updated in a way
        // that matters for tests, so a poisoned lock is still used.
        let mut rng = self.0.lock().unwrap_or_else(|p| p.into_inner());
        rng.fill_bytes(dest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_repeats_and_two_seeds_differ() {
        let (mut a, mut b, mut c) = ([0u8; 16], [0u8; 16], [0u8; 16]);
        SeededEntropy::new(1).fill(&mut a);
        SeededEntropy::new(1).fill(&mut b);
        SeededEntropy::new(2).fill(&mut c);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut d = [0u8; 16];
        OsEntropy.fill(&mut d);
        assert_ne!(d, [0u8; 16]);
    }
}
