//! Size buckets for sealed payloads: a relay learns which bucket an envelope
//! falls in, never its exact length.
//!
//! A client pads the `Sealed` wrapper (the plaintext of the seal) with its
//! `padding` field so that the sealed payload lands exactly on a bucket:
//! 256 B, 1 KiB, 4 KiB, 16 KiB, 64 KiB, then multiples of 64 KiB up to the
//! envelope limit. The padding sits inside the seal's AEAD, so the relay can
//! neither see where it starts nor strip it. Readers ignore the field, and a
//! payload without it (made before padding existed) opens as before.
//!
//! The field costs a tag byte, a varint length and the filler, so some
//! shortfalls cannot be filled exactly (1 or 2 bytes, or a length whose
//! varint grows by a byte at the boundary); [`padding_for`] then moves up to
//! the next bucket. Pure arithmetic, no I/O.

/// The fixed small buckets, in bytes of sealed payload.
pub const SMALL_BUCKETS: [usize; 5] = [256, 1024, 4096, 16 * 1024, 64 * 1024];

/// Above the small buckets, payloads are padded to multiples of this.
pub const LARGE_BUCKET_STEP: usize = 64 * 1024;

/// Whether `len` bytes of sealed payload is a bucket size.
pub fn is_bucket(len: usize) -> bool {
    SMALL_BUCKETS.contains(&len) || (len > LARGE_BUCKET_STEP && len % LARGE_BUCKET_STEP == 0)
}

/// Bucket sizes in increasing order, starting with the smallest at least
/// `len`, up to and including `max` (the envelope limit).
pub fn buckets_from(len: usize, max: usize) -> impl Iterator<Item = usize> {
    let large = (2..).map(|k: usize| k.saturating_mul(LARGE_BUCKET_STEP));
    SMALL_BUCKETS
        .into_iter()
        .chain(large)
        .skip_while(move |b| *b < len)
        .take_while(move |b| *b <= max)
}

/// Bytes a protobuf varint of `n` takes.
fn varint_len(n: usize) -> usize {
    let mut len = 1;
    let mut n = n >> 7;
    while n > 0 {
        len += 1;
        n >>= 7;
    }
    len
}

/// Bytes the `padding` field (field 4, length-delimited) adds to the encoded
/// `Sealed` when it holds `filler` bytes; an empty field is not encoded.
pub fn field_len(filler: usize) -> usize {
    if filler == 0 {
        0
    } else {
        1 + varint_len(filler) + filler
    }
}

/// Filler bytes that grow an encoded message by exactly `shortfall` bytes,
/// if some number does (see the module docs).
fn filler_for(shortfall: usize) -> Option<usize> {
    if shortfall == 0 {
        return Some(0);
    }
    (1..=10).find_map(|varint| {
        let filler = shortfall.checked_sub(1 + varint)?;
        (filler > 0 && varint_len(filler) == varint).then_some(filler)
    })
}

/// How many filler bytes to put in `Sealed.padding` when the sealed payload
/// would be `unpadded` bytes long without it: the smallest bucket it can be
/// grown to exactly, not above `max`. `None` when no bucket up to `max`
/// fits (the payload is too large to send padded).
pub fn padding_for(unpadded: usize, max: usize) -> Option<usize> {
    buckets_from(unpadded, max).find_map(|b| filler_for(b - unpadded))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = crate::limits::DEFAULT_MAX_ENVELOPE;

    #[test]
    fn buckets_are_the_documented_sizes() {
        let all: Vec<usize> = buckets_from(0, 4 * LARGE_BUCKET_STEP).collect();
        assert_eq!(all, [256, 1024, 4096, 16384, 65536, 131072, 196608, 262144]);
        assert!(all.iter().all(|b| is_bucket(*b)));
        assert!(!is_bucket(255) && !is_bucket(0) && !is_bucket(65537));
    }

    #[test]
    fn shortfalls_that_no_field_fills_move_up_a_bucket() {
        // 1 and 2 bytes: the smallest field is 3 bytes (tag, length, 1 byte).
        assert_eq!(padding_for(255, MAX), Some(field_filler(1024 - 255)));
        assert_eq!(padding_for(254, MAX), Some(field_filler(1024 - 254)));
        assert_eq!(padding_for(253, MAX), Some(1));
        // 130: 127 filler bytes make 129, 128 make 131.
        assert_eq!(padding_for(256 - 130, MAX), Some(field_filler(1024 - 126)));
        // Too close to the limit, or over it: nothing fits.
        assert_eq!(padding_for(MAX - 1, MAX), None);
        assert_eq!(padding_for(MAX + 1, MAX), None);
        assert_eq!(padding_for(MAX, MAX), Some(0));
    }

    /// The filler for an exactly fillable shortfall.
    fn field_filler(shortfall: usize) -> usize {
        filler_for(shortfall).unwrap()
    }

    proptest! {
        #[test]
        fn padding_lands_exactly_on_a_bucket(unpadded in 0usize..=MAX + 10) {
            match padding_for(unpadded, MAX) {
                Some(filler) => {
                    let len = unpadded + field_len(filler);
                    prop_assert!(is_bucket(len));
                    prop_assert!(len <= MAX);
                    // Never more than one bucket above the smallest that holds it.
                    let first = buckets_from(unpadded, MAX).next().unwrap();
                    let second = buckets_from(first + 1, MAX).next().unwrap_or(first);
                    prop_assert!(len == first || len == second);
                }
                None => prop_assert!(unpadded > MAX - 3),
            }
        }
    }
}
