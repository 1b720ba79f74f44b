//! A small seeded PRNG (xorshift64*): the run's choices come from one
//! printed seed, so a failing run's chaos can be replayed (the timing of
//! the processes, of course, cannot).

use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // xorshift has one bad state, zero; splitmix64 spreads nearby seeds
        // (seed, seed + 1, ...) apart and never maps to zero here.
        Rng(splitmix64(seed) | 1)
    }

    /// An independent stream for the `index`-th user of `seed`.
    pub fn stream(seed: u64, index: u64) -> Rng {
        Rng::new(seed ^ splitmix64(index.wrapping_add(0x5EED)))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `low..=high` (the modulo bias is negligible for the small
    /// ranges used here).
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        debug_assert!(low <= high);
        low + self.next_u64() % (high - low + 1)
    }

    /// An index into `weights`, chosen in proportion to the weights; `None`
    /// when they are all zero.
    pub fn weighted(&mut self, weights: &[u64]) -> Option<usize> {
        let total: u64 = weights.iter().sum();
        if total == 0 {
            return None;
        }
        let mut point = self.next_u64() % total;
        for (index, &weight) in weights.iter().enumerate() {
            if point < weight {
                return Some(index);
            }
            point -= weight;
        }
        None
    }
}

fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed for a run that was not given one.
pub fn seed_from_clock() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn between_stays_in_range() {
        let mut rng = Rng::new(7);
        for _ in 0..10_000 {
            let n = rng.between(3, 5);
            assert!((3..=5).contains(&n));
        }
    }

    #[test]
    fn weighted_never_picks_zero_weight() {
        let mut rng = Rng::new(9);
        for _ in 0..10_000 {
            assert_ne!(rng.weighted(&[1, 0, 2]), Some(1));
        }
        assert_eq!(rng.weighted(&[0, 0]), None);
    }
}
