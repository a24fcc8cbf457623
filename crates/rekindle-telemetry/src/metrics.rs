use prometheus::{Encoder, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::TelemetryError;

/// Every metric rekindle exports. Names follow `rekindle_<subsystem>_<name>_<unit>[_total]`;
/// label values are bounded (partition numbers, rule ids, error kinds).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Records read from the activity topic, ticks and malformed records included.
    pub records_received: IntCounterVec,
    /// Activity events applied to state.
    pub events_processed: IntCounterVec,
    /// Records that could not be used, by error kind.
    pub records_malformed: IntCounterVec,
    /// Records forwarded to the dead-letter topic, by error kind.
    pub dead_letters: IntCounterVec,
    /// Records skipped because state already reflects them (redelivery after a restart).
    pub records_skipped_replayed: IntCounter,
    pub clock_ticks_processed: IntCounter,
    pub clock_ticks_sent: IntCounter,
    /// The pipeline clock per partition, in milliseconds since the epoch.
    pub clock_ms: IntGaugeVec,
    pub triggers_fired: IntCounterVec,
    pub triggers_acked: IntCounter,
    pub batches_committed: IntCounter,
}

impl Metrics {
    pub fn new() -> Result<Metrics, TelemetryError> {
        let registry = Registry::new();
        let counter_vec =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, TelemetryError> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let counter = |name: &str, help: &str| -> Result<IntCounter, TelemetryError> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let clock_ms = IntGaugeVec::new(
            Opts::new(
                "rekindle_clock_pipeline_time_ms",
                "Pipeline clock per partition, ms since the epoch.",
            ),
            &["partition"],
        )?;
        registry.register(Box::new(clock_ms.clone()))?;
        Ok(Metrics {
            records_received: counter_vec(
                "rekindle_ingest_records_received_total",
                "Records read from the activity topic.",
                &["partition"],
            )?,
            events_processed: counter_vec(
                "rekindle_ingest_events_processed_total",
                "Activity events applied to state.",
                &["partition"],
            )?,
            records_malformed: counter_vec(
                "rekindle_ingest_records_malformed_total",
                "Records that could not be decoded or failed validation, by error kind.",
                &["error"],
            )?,
            dead_letters: counter_vec(
                "rekindle_ingest_dead_letters_total",
                "Records acknowledged on the dead-letter topic, by error kind.",
                &["error"],
            )?,
            records_skipped_replayed: counter(
                "rekindle_ingest_records_skipped_replayed_total",
                "Redelivered records skipped because state already reflects them.",
            )?,
            clock_ticks_processed: counter(
                "rekindle_clock_ticks_processed_total",
                "Clock-tick records read back from the activity topic.",
            )?,
            clock_ticks_sent: counter(
                "rekindle_clock_ticks_sent_total",
                "Clock-tick records appended.",
            )?,
            clock_ms,
            triggers_fired: counter_vec(
                "rekindle_rules_triggers_fired_total",
                "Triggers fired, by rule.",
                &["rule"],
            )?,
            triggers_acked: counter(
                "rekindle_emit_triggers_acked_total",
                "Triggers acknowledged by the broker.",
            )?,
            batches_committed: counter(
                "rekindle_state_batches_committed_total",
                "Batches whose state and offsets were committed to RocksDB.",
            )?,
            registry,
        })
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

    #[test]
    fn renders_named_metrics() {
        let m = Metrics::new().expect("metrics");
        m.records_malformed.with_label_values(&["avro"]).inc_by(3);
        m.triggers_fired.with_label_values(&["lapsed_7d"]).inc();
        let text = m.render();
        assert!(
            text.contains("rekindle_ingest_records_malformed_total{error=\"avro\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("rekindle_rules_triggers_fired_total{rule=\"lapsed_7d\"} 1"),
            "{text}"
        );
    }
}
