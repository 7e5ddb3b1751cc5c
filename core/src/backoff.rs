//! Retry delays: exponential backoff with optional full jitter, computed
//! from the run's seed so that the same history gives the same times.

use crate::model::{Jitter, RetryPolicy};

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny, well-mixed generator;
/// enough for jitter and reproducible on every machine.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a of a string, to mix a step id into the seed.
pub fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Delay in milliseconds before the attempt after attempt number `used`
/// (1-based count of attempts spent): `min(max_backoff, initial ×
/// multiplier^(used-1))`, and with full jitter a uniform draw in
/// `[0, delay]` from `(seed, step, used)`.
pub fn delay_ms(policy: &RetryPolicy, used: u32, seed: u64, step: &str) -> u64 {
    let exp = used.saturating_sub(1).min(64) as i32;
    let raw = policy.initial_backoff.ms as f64 * policy.multiplier.powi(exp);
    let capped = raw.min(policy.max_backoff.ms as f64).max(0.0) as u64;
    match policy.jitter {
        Jitter::None => capped,
        Jitter::Full => {
            let r = splitmix64(seed ^ fnv1a(step) ^ (used as u64).wrapping_mul(0x9E37_79B9));
            if capped == 0 { 0 } else { r % (capped + 1) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HumanDuration;

    #[test]
    fn exponential_and_capped() {
        let p = RetryPolicy {
            initial_backoff: HumanDuration::from_ms(100),
            multiplier: 2.0,
            max_backoff: HumanDuration::from_ms(500),
            ..RetryPolicy::default()
        };
        let d: Vec<u64> = (1..=5).map(|n| delay_ms(&p, n, 7, "s")).collect();
        assert_eq!(d, vec![100, 200, 400, 500, 500]);
    }

    #[test]
    fn full_jitter_is_bounded_and_reproducible() {
        let p = RetryPolicy {
            jitter: Jitter::Full,
            ..RetryPolicy::default()
        };
        for n in 1..10 {
            let a = delay_ms(&p, n, 42, "step");
            assert_eq!(a, delay_ms(&p, n, 42, "step"));
            assert!(a <= (1000.0 * 2f64.powi(n as i32 - 1)).min(300_000.0) as u64);
        }
        assert_ne!(delay_ms(&p, 3, 1, "x"), delay_ms(&p, 3, 2, "x"));
    }
}
