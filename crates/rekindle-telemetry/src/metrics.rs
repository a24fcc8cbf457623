use prometheus::{
    CounterVec, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::TelemetryError;

/// Latency buckets in seconds: sub-second for live traffic, up to a week for backfills.
const LATENCY_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
    21600.0, 86400.0, 604800.0,
];

/// The steps of the worker's loop, counted by `rekindle_pipeline_phase_seconds_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for records.
    Fetch,
    /// The engine.
    Process,
    /// Triggers, audit records and dead letters handed over and acknowledged (with
    /// transactions, the whole transaction).
    Deliver,
    /// Changelog records sent and acknowledged.
    Changelog,
    /// State written to RocksDB.
    Commit,
}

impl Phase {
    const ALL: [Phase; 5] = [
        Phase::Fetch,
        Phase::Process,
        Phase::Deliver,
        Phase::Changelog,
        Phase::Commit,
    ];

    fn label(self) -> &'static str {
        match self {
            Phase::Fetch => "fetch",
            Phase::Process => "process",
            Phase::Deliver => "deliver",
            Phase::Changelog => "changelog",
            Phase::Commit => "commit",
        }
    }
}

/// Every metric rekindle exports, as specified in docs/instrumentation.md. Names follow
/// `rekindle_<subsystem>_<name>_<unit>[_total]` in base units; label values are bounded
/// (topic names, partition numbers, rule ids, error kinds).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Per partition, the engines in this process that hold its series: with several
    /// pipelines a partition can move from one to another, and the one that lets it go
    /// may do so after the one that took it resolved its series.
    partition_holders: Arc<Mutex<HashMap<u32, usize>>>,
    pub records_received: IntCounterVec,
    pub events_processed: IntCounterVec,
    pub records_malformed: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub records_skipped_replayed: IntCounter,
    pub consumer_lag: IntGaugeVec,
    pub assigned_partitions: IntGauge,
    pub rebalances: IntCounterVec,
    pub processing_latency: Histogram,
    /// Seconds spent per step of the worker's loop (see [`Phase`]).
    pub phase_seconds: CounterVec,
    pub clock_ticks_processed: IntCounter,
    pub clock_ticks_sent: IntCounter,
    pub clock_time: GaugeVec,
    pub clock_lag: GaugeVec,
    pub triggers_fired: IntCounterVec,
    pub suppressed: IntCounterVec,
    pub reactivations: IntCounterVec,
    pub attributable: IntCounterVec,
    pub stage_transitions: IntCounterVec,
    pub stage_users: IntGaugeVec,
    pub growth_active_users: IntGaugeVec,
    pub growth_cohort_users: IntGaugeVec,
    pub growth_cohort_returned: IntGaugeVec,
    pub growth_uncounted: IntCounterVec,
    pub growth_segment_users: IntGaugeVec,
    pub experiment_users: IntGaugeVec,
    pub audit_acked: IntCounter,
    pub triggers_acked: IntCounter,
    pub trigger_latency: Histogram,
    pub producer_in_flight: IntGauge,
    pub producer_errors: IntCounter,
    pub batches_committed: IntCounter,
    pub state_live_data: IntGauge,
    pub state_users: IntGauge,
    pub state_cached_profiles: IntGauge,
    pub state_stored_profile_bytes: IntGauge,
    pub state_compaction_pending: IntGauge,
    pub state_pending_timers: IntGaugeVec,
    pub state_block_cache_hits: IntCounter,
    pub state_block_cache_misses: IntCounter,
    pub state_write_stall: prometheus::Counter,
    pub state_restore_duration: Histogram,
    pub state_restored_records: IntCounter,
    pub state_changelog_records: IntCounter,
    pub transactions_committed: IntCounter,
    pub transactions_aborted: IntCounter,
    pub ready: IntGauge,
}

/// Handles on the per-partition series the engine touches for every record.
#[derive(Clone)]
pub struct PartitionSeries {
    pub received: IntCounter,
    pub processed: IntCounter,
    pub clock_time: Gauge,
    /// Users per lifecycle stage, in `LifecycleStage::index` order.
    pub stage_users: [IntGauge; 5],
    pub pending_timers: IntGauge,
    /// Distinct users active in the 1, 7 and 30 days ending with the clock's day.
    pub active_users: [IntGauge; 3],
    /// Per retention day (1, 7, 30): users of the latest complete cohort, then of the seven
    /// latest complete cohorts together.
    pub cohort_users: [[IntGauge; 2]; 3],
    /// The same cohorts' users active again on that day.
    pub cohort_returned: [[IntGauge; 2]; 3],
    /// Users per RFM segment, in the configured order.
    pub segment_users: Vec<IntGauge>,
    /// Per configured (rule, arm), in the order given: users triggered (or held out) in the
    /// arm, and of them reactivated.
    pub arm_users: Vec<[IntGauge; 2]>,
}

/// The lifecycle transition counters of one engine, each resolved on its first use: a
/// label lookup hashes both labels and takes the vector's lock, once per stage change
/// otherwise, and at a million users silence brings several changes per event. Series
/// appear only once a transition happens, as with a lookup each time.
pub struct StageTransitions {
    counters: IntCounterVec,
    /// By stage index (see [`STAGES`]), the last row and column for none.
    cells: [[Option<IntCounter>; STAGES.len() + 1]; STAGES.len() + 1],
}

impl StageTransitions {
    pub fn new(metrics: &Metrics) -> StageTransitions {
        StageTransitions {
            counters: metrics.stage_transitions.clone(),
            cells: Default::default(),
        }
    }

    /// Counts one change from stage `from` to stage `to`, by stage index; `None` is no
    /// stage. An index past the known stages is counted as none.
    pub fn inc(&mut self, from: Option<usize>, to: Option<usize>) {
        let slot =
            |stage: Option<usize>| stage.filter(|&i| i < STAGES.len()).unwrap_or(STAGES.len());
        let (from, to) = (slot(from), slot(to));
        let label = |i: usize| STAGES.get(i).copied().unwrap_or("none");
        let Some(cell) = self.cells.get_mut(from).and_then(|row| row.get_mut(to)) else {
            return;
        };
        cell.get_or_insert_with(|| self.counters.with_label_values(&[label(from), label(to)]))
            .inc();
    }
}

/// `window` label values of the active-user gauge.
const WINDOWS: [&str; 3] = ["1d", "7d", "30d"];
/// `day` label values of the retention gauges.
const RETENTION_DAYS: [&str; 3] = ["1", "7", "30"];
/// `cohorts` label values of the retention gauges.
const COHORT_SPANS: [&str; 2] = ["latest", "last7"];

/// Stage label values in `LifecycleStage::index` order.
const STAGES: [&str; 5] = ["new", "active", "at_risk", "dormant", "churned"];

struct Builder {
    registry: Registry,
}

impl Builder {
    fn register<M: prometheus::core::Collector + Clone + 'static>(
        &self,
        metric: M,
    ) -> Result<M, TelemetryError> {
        self.registry.register(Box::new(metric.clone()))?;
        Ok(metric)
    }
    fn counter(&self, name: &str, help: &str) -> Result<IntCounter, TelemetryError> {
        self.register(IntCounter::new(name, help)?)
    }
    fn counter_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, TelemetryError> {
        self.register(IntCounterVec::new(Opts::new(name, help), labels)?)
    }
    fn gauge(&self, name: &str, help: &str) -> Result<IntGauge, TelemetryError> {
        self.register(IntGauge::new(name, help)?)
    }
    fn gauge_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntGaugeVec, TelemetryError> {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels)?)
    }
    fn float_gauge_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<GaugeVec, TelemetryError> {
        self.register(GaugeVec::new(Opts::new(name, help), labels)?)
    }
    fn float_counter_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<CounterVec, TelemetryError> {
        self.register(CounterVec::new(Opts::new(name, help), labels)?)
    }
    fn histogram(&self, name: &str, help: &str) -> Result<Histogram, TelemetryError> {
        self.register(Histogram::with_opts(
            HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        )?)
    }
}

impl Metrics {
    pub fn new() -> Result<Metrics, TelemetryError> {
        let b = Builder {
            registry: Registry::new(),
        };
        let metrics = Metrics {
            records_received: b.counter_vec(
                "rekindle_ingest_records_received_total",
                "Records read from the activity topic, ticks and malformed records included.",
                &["topic", "partition"],
            )?,
            events_processed: b.counter_vec(
                "rekindle_ingest_events_processed_total",
                "Activity events applied to state.",
                &["topic", "partition"],
            )?,
            records_malformed: b.counter_vec(
                "rekindle_ingest_records_malformed_total",
                "Records that could not be decoded or failed validation, by error kind.",
                &["error"],
            )?,
            dead_letters: b.counter_vec(
                "rekindle_ingest_dead_letters_total",
                "Records acknowledged on the dead-letter topic, by error kind.",
                &["error"],
            )?,
            records_skipped_replayed: b.counter(
                "rekindle_ingest_records_skipped_replayed_total",
                "Redelivered records skipped because state already reflects them.",
            )?,
            consumer_lag: b.gauge_vec(
                "rekindle_ingest_consumer_lag_records",
                "Records between the partition's high watermark and the next offset to process.",
                &["partition"],
            )?,
            assigned_partitions: b.gauge(
                "rekindle_ingest_assigned_partitions",
                "Activity partitions this worker owns.",
            )?,
            rebalances: b.counter_vec(
                "rekindle_ingest_rebalances_total",
                "Partition assignment changes, by kind (assign or revoke).",
                &["kind"],
            )?,
            processing_latency: b.histogram(
                "rekindle_pipeline_processing_latency_seconds",
                "From an event's time to its processing (wall clock); backfills show as days.",
            )?,
            phase_seconds: b.float_counter_vec(
                "rekindle_pipeline_phase_seconds_total",
                "Seconds the worker's loop spent in each step: fetch (waiting for records), \
                 process (the engine), deliver (triggers, audit records and dead letters \
                 acknowledged), changelog (changelog records acknowledged), commit (state \
                 written to RocksDB).",
                &["phase"],
            )?,
            clock_ticks_processed: b.counter(
                "rekindle_clock_ticks_processed_total",
                "Clock-tick records read back from the activity topic.",
            )?,
            clock_ticks_sent: b.counter(
                "rekindle_clock_ticks_sent_total",
                "Clock-tick records appended.",
            )?,
            clock_time: b.float_gauge_vec(
                "rekindle_clock_pipeline_time_seconds",
                "Pipeline clock per partition, seconds since the epoch.",
                &["partition"],
            )?,
            clock_lag: b.float_gauge_vec(
                "rekindle_clock_lag_seconds",
                "Wall clock minus the partition's pipeline clock, at the last commit.",
                &["partition"],
            )?,
            triggers_fired: b.counter_vec(
                "rekindle_rules_triggers_fired_total",
                "Triggers fired, by rule.",
                &["rule"],
            )?,
            suppressed: b.counter_vec(
                "rekindle_policy_decisions_not_sent_total",
                "Triggers a rule fired that did not go out, by rule, decision (suppressed, deferred, cancelled) and reason.",
                &["rule", "decision", "reason"],
            )?,
            reactivations: b.counter_vec(
                "rekindle_policy_reactivations_total",
                "Triggered (treatment) or held-out (holdout) users active again within the attribution window, by rule.",
                &["rule", "group"],
            )?,
            attributable: b.counter_vec(
                "rekindle_policy_attributable_total",
                "Triggers delivered (treatment) or held out (holdout), by rule: the denominators of reactivation rates.",
                &["rule", "group"],
            )?,
            stage_transitions: b.counter_vec(
                "rekindle_lifecycle_transitions_total",
                "Lifecycle stage changes; \"none\" is a user before their first activity or after deletion.",
                &["from", "to"],
            )?,
            stage_users: b.gauge_vec(
                "rekindle_lifecycle_users",
                "Users per lifecycle stage in each owned partition, at the last commit; sum over partitions.",
                &["partition", "stage"],
            )?,
            growth_active_users: b.gauge_vec(
                "rekindle_growth_active_users",
                "Distinct users active in the 1, 7 or 30 calendar days (reporting zone) ending with the clock's day, per owned partition, at the last commit; sum over partitions.",
                &["partition", "window"],
            )?,
            growth_cohort_users: b.gauge_vec(
                "rekindle_growth_cohort_users",
                "New users of the latest complete cohort for retention day N (cohorts=latest) or of the seven latest together (cohorts=last7), per owned partition.",
                &["partition", "day", "cohorts"],
            )?,
            growth_cohort_returned: b.gauge_vec(
                "rekindle_growth_cohort_returned_users",
                "Of those cohorts' users, how many were active again on day N after their first day.",
                &["partition", "day", "cohorts"],
            )?,
            growth_uncounted: b.counter_vec(
                "rekindle_growth_uncounted_activity_total",
                "Activities left out of the growth figures, by reason (too_late: over 34 days behind the user's latest day; ahead: dated after the clock's next day).",
                &["reason"],
            )?,
            growth_segment_users: b.gauge_vec(
                "rekindle_growth_segment_users",
                "Users per RFM segment in each owned partition, at the last commit; sum over partitions.",
                &["partition", "segment"],
            )?,
            experiment_users: b.gauge_vec(
                "rekindle_experiment_users",
                "Distinct users a rule triggered (or held out) in each arm of its experiment (outcome=triggered), and of them those back within the attribution window (outcome=reactivated), per owned partition, at the last commit; sum over partitions.",
                &["partition", "rule", "arm", "outcome"],
            )?,
            audit_acked: b.counter(
                "rekindle_emit_audit_records_acked_total",
                "Audit records acknowledged by the broker.",
            )?,
            triggers_acked: b.counter(
                "rekindle_emit_triggers_acked_total",
                "Triggers acknowledged by the broker.",
            )?,
            trigger_latency: b.histogram(
                "rekindle_emit_trigger_latency_seconds",
                "From a trigger's due time to its acknowledgement by the broker.",
            )?,
            producer_in_flight: b.gauge(
                "rekindle_emit_producer_in_flight_records",
                "Records handed to the producer and not yet acknowledged, at the last batch.",
            )?,
            producer_errors: b.counter(
                "rekindle_emit_producer_errors_total",
                "Sends that failed after librdkafka's own retries (the worker then stops).",
            )?,
            batches_committed: b.counter(
                "rekindle_state_batches_committed_total",
                "Batches whose state and offsets were committed to RocksDB.",
            )?,
            state_live_data: b.gauge(
                "rekindle_state_live_data_bytes",
                "RocksDB's estimate of live data in the state store.",
            )?,
            state_users: b.gauge(
                "rekindle_state_users",
                "RocksDB's estimate of the number of user profiles held.",
            )?,
            state_cached_profiles: b.gauge(
                "rekindle_state_profile_cache_decoded",
                "Decoded profiles held in memory, all open partitions.",
            )?,
            state_stored_profile_bytes: b.gauge(
                "rekindle_state_profile_cache_stored_bytes",
                "Memory held by profiles kept in their stored form, all open partitions.",
            )?,
            state_compaction_pending: b.gauge(
                "rekindle_state_compaction_pending_bytes",
                "RocksDB's estimate of bytes compaction still has to rewrite.",
            )?,
            state_pending_timers: b.gauge_vec(
                "rekindle_state_pending_timers",
                "Entries in the partition's timer index (users with a pending deadline, stage change or release), at the last commit.",
                &["partition"],
            )?,
            state_block_cache_hits: b.counter(
                "rekindle_state_block_cache_hits_total",
                "RocksDB block cache hits.",
            )?,
            state_block_cache_misses: b.counter(
                "rekindle_state_block_cache_misses_total",
                "RocksDB block cache misses.",
            )?,
            state_write_stall: b.register(prometheus::Counter::new(
                "rekindle_state_write_stall_seconds_total",
                "Time RocksDB stalled writes (compaction falling behind).",
            )?)?,
            state_restore_duration: b.register(Histogram::with_opts(
                HistogramOpts::new(
                    "rekindle_state_restore_duration_seconds",
                    "From a partition's assignment to its state being ready to process (restore included).",
                )
                .buckets(vec![0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0]),
            )?)?,
            state_restored_records: b.counter(
                "rekindle_state_restored_records_total",
                "Changelog records applied while restoring partitions assigned without their state.",
            )?,
            state_changelog_records: b.counter(
                "rekindle_state_changelog_records_total",
                "Changelog records sent (profiles, deletions and partition positions).",
            )?,
            transactions_committed: b.counter(
                "rekindle_emit_transactions_committed_total",
                "Kafka transactions committed (exactly_once mode).",
            )?,
            transactions_aborted: b.counter(
                "rekindle_emit_transactions_aborted_total",
                "Kafka transactions aborted; their batches were processed again (exactly_once mode).",
            )?,
            ready: b.gauge(
                "rekindle_health_ready",
                "1 when /health/readyz answers ready, 0 otherwise.",
            )?,
            registry: b.registry,
            partition_holders: Arc::default(),
        };
        for phase in Phase::ALL {
            metrics.phase_seconds.with_label_values(&[phase.label()]);
        }
        Ok(metrics)
    }

    /// Adds `seconds` to one step of the worker's loop.
    pub fn phase(&self, phase: Phase, seconds: f64) {
        self.phase_seconds
            .with_label_values(&[phase.label()])
            .inc_by(seconds);
    }

    /// One partition's series, resolved once so that the per-record path does no label
    /// lookup.
    /// `segments`: the configured segment names (none when segments are off); `arms`: the
    /// (rule, arm) pairs of the configured experiments.
    pub fn partition_series(
        &self,
        topic: &str,
        partition: u32,
        segments: &[String],
        arms: &[(String, String)],
    ) -> PartitionSeries {
        *self.holders().entry(partition).or_default() += 1;
        let label = partition.to_string();
        PartitionSeries {
            received: self
                .records_received
                .with_label_values(&[topic, label.as_str()]),
            processed: self
                .events_processed
                .with_label_values(&[topic, label.as_str()]),
            clock_time: self.clock_time.with_label_values(&[label.as_str()]),
            pending_timers: self
                .state_pending_timers
                .with_label_values(&[label.as_str()]),
            stage_users: STAGES
                .map(|stage| self.stage_users.with_label_values(&[label.as_str(), stage])),
            active_users: WINDOWS.map(|window| {
                self.growth_active_users
                    .with_label_values(&[label.as_str(), window])
            }),
            cohort_users: RETENTION_DAYS.map(|day| {
                COHORT_SPANS.map(|span| {
                    self.growth_cohort_users
                        .with_label_values(&[label.as_str(), day, span])
                })
            }),
            arm_users: arms
                .iter()
                .map(|(rule, arm)| {
                    ["triggered", "reactivated"].map(|outcome| {
                        self.experiment_users.with_label_values(&[
                            label.as_str(),
                            rule,
                            arm,
                            outcome,
                        ])
                    })
                })
                .collect(),
            segment_users: segments
                .iter()
                .map(|segment| {
                    self.growth_segment_users
                        .with_label_values(&[label.as_str(), segment.as_str()])
                })
                .collect(),
            cohort_returned: RETENTION_DAYS.map(|day| {
                COHORT_SPANS.map(|span| {
                    self.growth_cohort_returned
                        .with_label_values(&[label.as_str(), day, span])
                })
            }),
        }
    }

    /// Drops a partition's per-partition gauges when it moves to another worker, so that
    /// sums over workers count each partition once; not while another engine of this
    /// process holds them (it took the partition over from this one).
    pub fn forget_partition(&self, partition: u32, segments: &[String], arms: &[(String, String)]) {
        {
            let mut holders = self.holders();
            let held = holders.get(&partition).copied().unwrap_or(0);
            if held > 1 {
                holders.insert(partition, held - 1);
                return;
            }
            holders.remove(&partition);
        }
        let label = partition.to_string();
        for (rule, arm) in arms {
            for outcome in ["triggered", "reactivated"] {
                let _ = self.experiment_users.remove_label_values(&[
                    label.as_str(),
                    rule,
                    arm,
                    outcome,
                ]);
            }
        }
        for segment in segments {
            let _ = self
                .growth_segment_users
                .remove_label_values(&[label.as_str(), segment.as_str()]);
        }
        for stage in STAGES {
            let _ = self
                .stage_users
                .remove_label_values(&[label.as_str(), stage]);
        }
        for window in WINDOWS {
            let _ = self
                .growth_active_users
                .remove_label_values(&[label.as_str(), window]);
        }
        for day in RETENTION_DAYS {
            for span in COHORT_SPANS {
                let _ = self
                    .growth_cohort_users
                    .remove_label_values(&[label.as_str(), day, span]);
                let _ =
                    self.growth_cohort_returned
                        .remove_label_values(&[label.as_str(), day, span]);
            }
        }
        let _ = self.clock_time.remove_label_values(&[label.as_str()]);
        let _ = self
            .state_pending_timers
            .remove_label_values(&[label.as_str()]);
        let _ = self.clock_lag.remove_label_values(&[label.as_str()]);
        let _ = self.consumer_lag.remove_label_values(&[label.as_str()]);
    }

    fn holders(&self) -> std::sync::MutexGuard<'_, HashMap<u32, usize>> {
        // A count, consistent after any panic that interrupted an update.
        self.partition_holders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on metric families that cannot be gathered.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A partition moving between two engines of one process: the one letting it go may
    /// forget it after the other took it; its series stay until the last holder forgets.
    #[test]
    fn a_partition_s_series_stay_while_another_engine_holds_them() {
        let m = Metrics::new().expect("metrics");
        let pending = |m: &Metrics| {
            m.render()
                .contains("rekindle_state_pending_timers{partition=\"5\"}")
        };
        let old = m.partition_series("activity", 5, &[], &[]);
        old.pending_timers.set(3);
        let new = m.partition_series("activity", 5, &[], &[]);
        m.forget_partition(5, &[], &[]);
        new.pending_timers.set(4);
        assert!(pending(&m), "the holder's series were dropped");
        assert!(m
            .render()
            .contains("rekindle_state_pending_timers{partition=\"5\"} 4"));
        m.forget_partition(5, &[], &[]);
        assert!(!pending(&m), "the last holder forgot them");
        m.partition_series("activity", 5, &[], &[]);
        m.forget_partition(5, &[], &[]);
        assert!(!pending(&m), "counted afresh after the last forget");
    }

    #[test]
    fn stage_transitions_count_under_their_labels_and_only_once_seen() {
        let m = Metrics::new().expect("metrics");
        let mut transitions = StageTransitions::new(&m);
        transitions.inc(Some(1), Some(2));
        transitions.inc(Some(1), Some(2));
        transitions.inc(None, Some(0));
        transitions.inc(Some(4), None);
        transitions.inc(Some(9), Some(0));
        let text = m.render();
        let series = |from: &str, to: &str| {
            format!("rekindle_lifecycle_transitions_total{{from=\"{from}\",to=\"{to}\"}}")
        };
        assert!(
            text.contains(&format!("{} 2", series("active", "at_risk"))),
            "{text}"
        );
        assert!(
            text.contains(&format!("{} 2", series("none", "new"))),
            "{text}"
        );
        assert!(
            text.contains(&format!("{} 1", series("churned", "none"))),
            "{text}"
        );
        assert!(!text.contains(&series("new", "active")), "{text}");
        // A second engine's counts add to the same series.
        StageTransitions::new(&m).inc(Some(1), Some(2));
        assert!(m
            .render()
            .contains(&format!("{} 3", series("active", "at_risk"))));
    }

    #[test]
    fn renders_named_metrics() {
        let m = Metrics::new().expect("metrics");
        m.records_malformed.with_label_values(&["avro"]).inc_by(3);
        m.triggers_fired.with_label_values(&["lapsed_7d"]).inc();
        m.trigger_latency.observe(0.2);
        let text = m.render();
        assert!(
            text.contains("rekindle_ingest_records_malformed_total{error=\"avro\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("rekindle_rules_triggers_fired_total{rule=\"lapsed_7d\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("rekindle_emit_trigger_latency_seconds_bucket{le=\"0.25\"} 1"),
            "{text}"
        );
    }
}
