//! Safety numbers: what two people compare to know that each holds the
//! other's real identity key.
//!
//! Built like Signal's: for each side, a 30-digit fingerprint of its
//! identity key, and the safety number is the two fingerprints in ascending
//! order, so both sides compute the same 60 digits. Exact construction
//! (docs/protocol.md repeats it):
//!
//! ```text
//! h0 = SHA-512(0x00 0x00 || "tern/1 safety" || key)
//! h(i+1) = SHA-512(h(i) || key), 5200 times
//! fingerprint = for each of the first six 5-byte chunks c of h(5200):
//!               format("{:05}", u40_be(c) % 100000)
//! safety number = min(fa, fb) || max(fa, fb), shown in 12 groups of 5
//! ```

use sha2::{Digest, Sha512};

const ITERATIONS: usize = 5200;

/// One side's 30-digit fingerprint of its identity key.
pub fn fingerprint(identity_key: &[u8; 32]) -> String {
    let mut h = Sha512::new();
    h.update([0u8, 0u8]);
    h.update(b"tern/1 safety");
    h.update(identity_key);
    let mut digest = h.finalize();
    for _ in 0..ITERATIONS {
        let mut h = Sha512::new();
        h.update(digest);
        h.update(identity_key);
        digest = h.finalize();
    }
    let mut out = String::with_capacity(30);
    for chunk in digest[..30].chunks(5) {
        let n = chunk.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        out.push_str(&format!("{:05}", n % 100_000));
    }
    out
}

/// The 60-digit safety number of two identity keys; the same whichever
/// side computes it.
pub fn safety_number(ours: &[u8; 32], theirs: &[u8; 32]) -> String {
    let (a, b) = (fingerprint(ours), fingerprint(theirs));
    if a <= b {
        a + &b
    } else {
        b + &a
    }
}

/// A safety number as people read it: 12 groups of 5 digits.
pub fn grouped(number: &str) -> String {
    number
        .as_bytes()
        .chunks(5)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_see_the_same_sixty_digits() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let n = safety_number(&a, &b);
        assert_eq!(n, safety_number(&b, &a));
        assert_eq!(n.len(), 60);
        assert!(n.bytes().all(|c| c.is_ascii_digit()));
        assert_ne!(n, safety_number(&a, &[3u8; 32]));
        assert_eq!(grouped(&n).split(' ').count(), 12);
    }

    #[test]
    fn the_construction_is_fixed() {
        // Known answer: changing the construction changes every user's
        // safety numbers, so it must be a deliberate, documented change.
        // (Computed independently with Python's hashlib.)
        assert_eq!(fingerprint(&[0u8; 32]), "078202842686008827534648923196");
    }
}
