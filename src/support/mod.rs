//! Shared pieces of the black-box tests: a real tansu broker process, the rekindle binary,
//! scripted user histories, and an oracle written independently of rekindle's rule code.

pub mod broker;
pub mod crash;
pub mod histories;
pub mod scenario;
pub mod worker;

use std::time::{SystemTime, UNIX_EPOCH};

pub const DAY: i64 = 86_400_000;

/// splitmix64: a small deterministic generator for generated histories.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
