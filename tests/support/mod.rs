//! Shared pieces of the black-box tests: a real tansu broker process, the rekindle binary,
//! scripted user histories, and an oracle written independently of rekindle's rule code.

#![allow(dead_code)]

pub mod broker;
pub mod histories;
pub mod scenario;
pub mod worker;

use std::time::{SystemTime, UNIX_EPOCH};

pub const DAY: i64 = 86_400_000;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
