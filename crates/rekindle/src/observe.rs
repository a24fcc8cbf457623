//! The worker's side of observability: what the consumer reports, turned into metrics and
//! readiness, and figures sampled from the engine, the store and the producer.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use rekindle_engine::Engine;
use rekindle_kafka::SourceObserver;
use rekindle_telemetry::{Health, Metrics};
use tracing::warn;

pub struct WorkerObserver {
    pub metrics: Metrics,
    pub health: Arc<Health>,
}

impl SourceObserver for WorkerObserver {
    fn assigned(&self, partitions: &[u32]) {
        self.metrics.rebalances.with_label_values(&["assign"]).inc();
        self.metrics
            .assigned_partitions
            .add(partitions.len() as i64);
        self.health.set_joined();
        record_readiness(&self.metrics, &self.health);
    }

    fn revoked(&self, partitions: &[u32]) {
        self.metrics.rebalances.with_label_values(&["revoke"]).inc();
        self.metrics
            .assigned_partitions
            .sub(partitions.len() as i64);
        for p in partitions {
            // Revoked partitions stop reporting rather than freeze at a stale value.
            let label = p.to_string();
            let _ = self
                .metrics
                .consumer_lag
                .remove_label_values(&[label.as_str()]);
            let _ = self
                .metrics
                .clock_lag
                .remove_label_values(&[label.as_str()]);
        }
    }

    fn brokers_up(&self, up: usize) {
        if up == 0 {
            self.health.set_brokers_down();
        } else {
            self.health.set_broker_reachable();
        }
        record_readiness(&self.metrics, &self.health);
    }

    fn all_brokers_down(&self) {
        self.health.set_brokers_down();
        self.metrics.ready.set(0);
    }

    fn lag(&self, partition: u32, records: i64) {
        self.metrics
            .consumer_lag
            .with_label_values(&[partition.to_string().as_str()])
            .set(records);
    }
}

pub fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Seconds from `from_ms` to `to_ms`, never negative (clocks of producers may run ahead).
pub fn seconds_between(from_ms: i64, to_ms: i64) -> f64 {
    (to_ms.saturating_sub(from_ms)).max(0) as f64 / 1000.0
}

/// Wall clock minus each open partition's pipeline clock.
pub fn record_clock_lag(metrics: &Metrics, engine: &Engine, now_ms: i64) {
    for partition in engine.partitions() {
        if let Some(clock) = engine.clock_ms(partition) {
            metrics
                .clock_lag
                .with_label_values(&[partition.to_string().as_str()])
                .set((now_ms - clock) as f64 / 1000.0);
        }
    }
}

/// RocksDB's cumulative statistics as last read, so that counters advance by the
/// difference. One per store: the worker's pipelines share it, since they share the store.
#[derive(Default)]
pub struct StoreCounters {
    hits: u64,
    misses: u64,
    stall_micros: u64,
}

/// What each pipeline's own engine and producer hold, summed into the worker's gauges.
pub struct PipelineFigures {
    /// Per pipeline, indexed by the figures below.
    slots: Vec<[AtomicI64; 3]>,
}

/// Decoded profiles the pipeline's engine holds.
const CACHED_PROFILES: usize = 0;
/// Bytes of the stored forms the pipeline's engine holds.
const STORED_PROFILE_BYTES: usize = 1;
/// Records the pipeline's producer has not had acknowledged.
const IN_FLIGHT: usize = 2;

impl PipelineFigures {
    pub fn new(pipelines: usize) -> PipelineFigures {
        PipelineFigures {
            slots: (0..pipelines).map(|_| Default::default()).collect(),
        }
    }

    /// Sets pipeline `index`'s figure `which` and returns the sum over pipelines.
    fn set(&self, index: usize, which: usize, value: i64) -> i64 {
        if let Some(slot) = self.slots.get(index).and_then(|s| s.get(which)) {
            slot.store(value, Ordering::Relaxed);
        }
        self.slots
            .iter()
            .filter_map(|s| s.get(which))
            .map(|v| v.load(Ordering::Relaxed))
            .sum()
    }

    /// Pipeline `index`'s producer holds `records` unacknowledged.
    pub fn in_flight(&self, metrics: &Metrics, index: usize, records: i64) {
        metrics
            .producer_in_flight
            .set(self.set(index, IN_FLIGHT, records));
    }
}

/// RocksDB size estimates and cache statistics, and pipeline `index`'s profile caches;
/// cheap, but sampled rather than read per batch.
pub fn record_store_stats(
    metrics: &Metrics,
    engine: &Engine,
    last: &Mutex<StoreCounters>,
    figures: &PipelineFigures,
    index: usize,
) {
    metrics.state_cached_profiles.set(figures.set(
        index,
        CACHED_PROFILES,
        i64::try_from(engine.cached_profiles()).unwrap_or(i64::MAX),
    ));
    metrics.state_stored_profile_bytes.set(figures.set(
        index,
        STORED_PROFILE_BYTES,
        i64::try_from(engine.stored_profile_bytes()).unwrap_or(i64::MAX),
    ));
    match engine.store().stats() {
        Ok(stats) => {
            {
                // Read and advanced under one lock: two pipelines reading the same
                // cumulative figure must not both add the difference.
                let mut last = last.lock().unwrap_or_else(PoisonError::into_inner);
                metrics
                    .state_block_cache_hits
                    .inc_by(stats.block_cache_hits.saturating_sub(last.hits));
                metrics
                    .state_block_cache_misses
                    .inc_by(stats.block_cache_misses.saturating_sub(last.misses));
                metrics.state_write_stall.inc_by(
                    stats.write_stall_micros.saturating_sub(last.stall_micros) as f64 / 1e6,
                );
                *last = StoreCounters {
                    hits: stats.block_cache_hits.max(last.hits),
                    misses: stats.block_cache_misses.max(last.misses),
                    stall_micros: stats.write_stall_micros.max(last.stall_micros),
                };
            }
            metrics.state_live_data.set(stats.live_data_bytes as i64);
            metrics.state_users.set(stats.profiles_estimate as i64);
            metrics
                .state_compaction_pending
                .set(stats.compaction_pending_bytes as i64);
        }
        Err(e) => warn!(error = %e, "cannot read state statistics"),
    }
}

/// Mirrors `/health/readyz` into `rekindle_health_ready`, so alerts can use it.
pub fn record_readiness(metrics: &Metrics, health: &Health) {
    metrics.ready.set(i64::from(health.readiness().is_ok()));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each pipeline reports its own figure; the gauge shows their sum, however often and
    /// in whatever order they report.
    #[test]
    fn the_pipelines_figures_add_up() {
        let metrics = Metrics::new().expect("metrics");
        let figures = PipelineFigures::new(2);
        figures.in_flight(&metrics, 0, 5);
        figures.in_flight(&metrics, 1, 7);
        assert_eq!(metrics.producer_in_flight.get(), 12);
        figures.in_flight(&metrics, 0, 1);
        assert_eq!(metrics.producer_in_flight.get(), 8);
        figures.in_flight(&metrics, 1, 0);
        assert_eq!(metrics.producer_in_flight.get(), 1);
    }
}
