//! Which pipeline of this worker holds each partition's state.
//!
//! A worker's pipelines share one RocksDB store. The group protocol revokes a partition
//! from one member before it assigns it to another, so a partition moving between two
//! pipelines of one worker is let go by the first before the second is told to take it;
//! but the second hears of it on its own thread, and may get there before the first has
//! closed the partition. A coordinator that hands out a partition its owner still
//! processes would have two engines writing one partition's state in one store. So a
//! pipeline claims a partition before it prepares its state, and waits for the holder to
//! let it go; a claim that is not released in time fails the assignment, and the worker
//! stops (to be restarted) rather than share the partition.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct PartitionClaims {
    /// Partition to the pipeline that holds it.
    held: Mutex<HashMap<u32, usize>>,
    released: Condvar,
}

impl PartitionClaims {
    fn held(&self) -> MutexGuard<'_, HashMap<u32, usize>> {
        // A map of small values, consistent after any panic that interrupted an update.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes `partition` for `pipeline`, waiting up to `timeout` for another pipeline of
    /// this worker to let it go.
    pub fn claim(&self, partition: u32, pipeline: usize, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut held = self.held();
        loop {
            match held.get(&partition) {
                None => {
                    held.insert(partition, pipeline);
                    return Ok(());
                }
                Some(holder) if *holder == pipeline => return Ok(()),
                Some(holder) => {
                    let holder = *holder;
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(format!(
                            "partition {partition} is still held by pipeline {holder} of this worker after {timeout:?}"
                        ));
                    }
                    held = self
                        .released
                        .wait_timeout(held, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
    }

    /// Lets `partition` go, if `pipeline` holds it.
    pub fn release(&self, partition: u32, pipeline: usize) {
        let mut held = self.held();
        if held.get(&partition) == Some(&pipeline) {
            held.remove(&partition);
            self.released.notify_all();
        }
    }

    /// Lets every partition `pipeline` holds go (the pipeline is leaving).
    pub fn release_all(&self, pipeline: usize) {
        let mut held = self.held();
        let before = held.len();
        held.retain(|_, holder| *holder != pipeline);
        if held.len() != before {
            self.released.notify_all();
        }
    }
}

/// Releases a pipeline's claims when it ends, however it ends.
pub struct ClaimsGuard<'a> {
    pub claims: &'a PartitionClaims,
    pub pipeline: usize,
}

impl Drop for ClaimsGuard<'_> {
    fn drop(&mut self) {
        self.claims.release_all(self.pipeline);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_claim_waits_for_the_holder_to_let_go() {
        let claims = Arc::new(PartitionClaims::default());
        claims.claim(3, 0, Duration::ZERO).expect("free");
        claims
            .claim(3, 0, Duration::ZERO)
            .expect("held by the same pipeline");
        claims
            .claim(4, 1, Duration::ZERO)
            .expect("another partition");
        let released = Arc::new(AtomicBool::new(false));
        let taker = {
            let (claims, released) = (claims.clone(), released.clone());
            std::thread::spawn(move || {
                let result = claims.claim(3, 1, Duration::from_secs(60));
                (result, released.load(Ordering::SeqCst))
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        released.store(true, Ordering::SeqCst);
        claims.release(3, 0);
        let (result, after_release) = taker.join().expect("taker");
        assert_eq!(result, Ok(()));
        assert!(after_release, "the claim returned before the holder let go");
        // Released by a pipeline that no longer holds it: nothing changes.
        claims.release(3, 0);
        let err = claims
            .claim(3, 0, Duration::from_millis(20))
            .expect_err("pipeline 1 holds it now");
        assert!(
            err.contains("partition 3") && err.contains("pipeline 1"),
            "{err}"
        );
    }

    #[test]
    fn a_pipeline_that_ends_lets_all_its_partitions_go() {
        let claims = PartitionClaims::default();
        {
            let _guard = ClaimsGuard {
                claims: &claims,
                pipeline: 0,
            };
            for p in 0..4 {
                claims.claim(p, 0, Duration::ZERO).expect("free");
            }
            claims.claim(9, 1, Duration::ZERO).expect("free");
        }
        for p in 0..4 {
            claims.claim(p, 1, Duration::ZERO).expect("released");
        }
        claims
            .claim(9, 0, Duration::from_millis(10))
            .expect_err("pipeline 1's own claim stays");
    }
}
