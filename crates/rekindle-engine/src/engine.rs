use std::collections::HashMap;

use rekindle_events::{ActivityEvent, EventDecoder, EventError, EventKind, ReactivationTrigger};
use rekindle_state::{PartitionState, Store};
use rekindle_telemetry::{Metrics, PartitionSeries};
use tracing::{debug, warn};

use crate::{EngineError, Record, RecordKind, RuleSet};

/// What became of one record.
#[derive(Debug)]
pub enum Disposition {
    /// Applied to state: an event (with its event time) or a tick.
    Applied { event_ms: Option<i64> },
    /// Below the partition's stored offset: state already reflects it.
    Skipped,
    /// Unusable: counted and logged; the caller sends it to the dead-letter topic.
    Rejected(EventError),
}

/// What the engine needs besides its store.
pub struct EngineConfig {
    /// Named in logs so an operator can find a bad record.
    pub topic: String,
    pub rules: RuleSet,
    pub decoder: EventDecoder,
    /// An event time more than this ahead of the record's ingest time is clamped to it
    /// before it moves the clock (the event still counts as activity at its own time).
    pub max_future_skew_ms: i64,
}

/// Running totals since the engine started, for progress logs and summaries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub records: u64,
    pub events: u64,
    pub malformed: u64,
    pub ticks: u64,
    pub skipped_replayed: u64,
    pub triggers: u64,
}

pub struct Engine {
    store: Store,
    stats: EngineStats,
    config: EngineConfig,
    partitions: HashMap<u32, PartitionState>,
    /// Metric series resolved once per partition, not once per record.
    partition_series: HashMap<u32, PartitionSeries>,
    metrics: Metrics,
}

impl Engine {
    pub fn new(store: Store, config: EngineConfig, metrics: Metrics) -> Engine {
        Engine {
            store,
            stats: EngineStats::default(),
            config,
            partitions: HashMap::new(),
            partition_series: HashMap::new(),
            metrics,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Opens a partition's state and returns the offset to resume from, if state has one.
    pub fn open_partition(&mut self, partition: u32) -> Result<Option<i64>, EngineError> {
        let state = self.partition(partition)?;
        Ok(state.resume_offset())
    }

    /// Forgets a partition. Call [`Engine::commit`] first: uncommitted changes are dropped.
    pub fn close_partition(&mut self, partition: u32) {
        self.partitions.remove(&partition);
    }

    pub fn partitions(&self) -> impl Iterator<Item = u32> + '_ {
        self.partitions.keys().copied()
    }

    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// Each open partition's next offset to process, for progress reporting.
    pub fn positions(&self) -> Vec<(u32, i64)> {
        self.partitions
            .iter()
            .filter_map(|(p, state)| state.resume_offset().map(|next| (*p, next)))
            .collect()
    }

    pub fn clock_ms(&self, partition: u32) -> Option<i64> {
        self.partitions
            .get(&partition)
            .map(PartitionState::clock_ms)
    }

    fn partition(&mut self, partition: u32) -> Result<&mut PartitionState, EngineError> {
        if !self.partitions.contains_key(&partition) {
            let state = PartitionState::open(&self.store, partition)?;
            self.partitions.insert(partition, state);
            let series = self.metrics.partition_series(&self.config.topic, partition);
            self.partition_series.insert(partition, series);
        }
        self.partitions.get_mut(&partition).ok_or_else(|| {
            EngineError::State(rekindle_state::StateError::Corrupt {
                what: "partition table",
                partition,
                reason: "entry vanished".into(),
            })
        })
    }

    /// Processes one record; triggers it causes are appended to `out` in firing order.
    pub fn process(
        &mut self,
        record: Record<'_>,
        out: &mut Vec<ReactivationTrigger>,
    ) -> Result<Disposition, EngineError> {
        let Record {
            partition,
            offset,
            kind,
        } = record;
        let resume = self.partition(partition)?.resume_offset();
        if let Some(series) = self.partition_series.get(&partition) {
            series.received.inc();
        }
        self.stats.records += 1;
        if resume.is_some_and(|next| offset < next) {
            self.metrics.records_skipped_replayed.inc();
            self.stats.skipped_replayed += 1;
            return Ok(Disposition::Skipped);
        }
        if let Some(next) = resume.filter(|next| offset > *next) {
            // Legitimate after compaction or transaction markers; otherwise a sign of loss.
            debug!(topic = %self.config.topic, partition, expected = next, got = offset, "offset gap");
        }
        let disposition = match kind {
            RecordKind::Tick(time_ms) => {
                self.metrics.clock_ticks_processed.inc();
                self.stats.ticks += 1;
                self.advance_clock(partition, time_ms, out)?;
                Disposition::Applied { event_ms: None }
            }
            RecordKind::Avro {
                payload,
                timestamp_ms,
            } => match self.config.decoder.decode(payload) {
                Ok(event) => self.apply(partition, offset, event, timestamp_ms, out)?,
                Err(error) => self.malformed(partition, offset, error),
            },
            RecordKind::Event { event, ingest_ms } => {
                self.apply(partition, offset, *event, ingest_ms, out)?
            }
            RecordKind::Unreadable(error) => self.malformed(partition, offset, error),
        };
        self.partition(partition)?
            .set_next_offset(offset.saturating_add(1));
        Ok(disposition)
    }

    /// Counts and logs a record that cannot be used; the caller dead-letters it.
    fn malformed(&mut self, partition: u32, offset: i64, error: EventError) -> Disposition {
        self.stats.malformed += 1;
        self.metrics
            .records_malformed
            .with_label_values(&[error.kind()])
            .inc();
        warn!(topic = %self.config.topic, partition, offset, error = %error, "malformed record skipped");
        Disposition::Rejected(error)
    }

    fn apply(
        &mut self,
        partition: u32,
        offset: i64,
        event: ActivityEvent,
        ingest_ms: Option<i64>,
        out: &mut Vec<ReactivationTrigger>,
    ) -> Result<Disposition, EngineError> {
        if let Err(error) = event.validate() {
            return Ok(self.malformed(partition, offset, error));
        }
        let clock_candidate = match ingest_ms {
            Some(ingest) => event
                .timestamp_ms
                .min(ingest.saturating_add(self.config.max_future_skew_ms)),
            None => event.timestamp_ms,
        };
        self.advance_clock(partition, clock_candidate, out)?;
        if event.kind() == EventKind::Activity {
            let session_seconds = u32::try_from(event.session_seconds).unwrap_or(0);
            let rules = &self.config.rules;
            let state = self
                .partitions
                .get_mut(&partition)
                .ok_or_else(|| missing(partition))?;
            let profile = state.profile_mut(&event.user_id)?;
            profile.record_activity(
                rules.windows(),
                event.timestamp_ms,
                session_seconds,
                event.amount,
            );
            let (from, to) = (profile.wake_at_ms, rules.next_wake(profile));
            profile.wake_at_ms = to;
            state.move_timer(&event.user_id, from, to);
            let clock = state.clock_ms();
            self.fire_due(partition, clock, out)?;
        }
        if let Some(series) = self.partition_series.get(&partition) {
            series.processed.inc();
        }
        self.stats.events += 1;
        Ok(Disposition::Applied {
            event_ms: Some(event.timestamp_ms),
        })
    }

    /// Moves the partition clock forward to `time_ms` (never back) and fires what is due.
    pub fn advance_clock(
        &mut self,
        partition: u32,
        time_ms: i64,
        out: &mut Vec<ReactivationTrigger>,
    ) -> Result<(), EngineError> {
        let state = self.partition(partition)?;
        if time_ms <= state.clock_ms() {
            return Ok(());
        }
        state.set_clock_ms(time_ms);
        self.fire_due(partition, time_ms, out)
    }

    fn fire_due(
        &mut self,
        partition: u32,
        now_ms: i64,
        out: &mut Vec<ReactivationTrigger>,
    ) -> Result<(), EngineError> {
        let state = self
            .partitions
            .get_mut(&partition)
            .ok_or_else(|| missing(partition))?;
        if !state.may_have_due(now_ms) {
            return Ok(());
        }
        let rules = &self.config.rules;
        let fired_before = out.len();
        for timer in state.take_due(now_ms)? {
            let profile = state.profile_mut(&timer.user_id)?;
            if profile.wake_at_ms != Some(timer.due_ms) {
                // A stale index entry: the user's timer moved after it was written.
                continue;
            }
            rules.fire(&timer.user_id, profile, now_ms, out);
            let next = rules.next_wake(profile);
            profile.wake_at_ms = next;
            state.move_timer(&timer.user_id, None, next);
        }
        self.stats.triggers += (out.len() - fired_before) as u64;
        for trigger in &out[fired_before..] {
            self.metrics
                .triggers_fired
                .with_label_values(&[trigger.rule_id.as_str()])
                .inc();
        }
        Ok(())
    }

    /// Writes every open partition's batch. Call once the batch's triggers are safely out.
    pub fn commit(&mut self) -> Result<(), EngineError> {
        for (partition, state) in &mut self.partitions {
            state.flush()?;
            if let Some(series) = self.partition_series.get(partition) {
                series.clock_time.set(state.clock_ms() as f64 / 1000.0);
            }
        }
        self.metrics.batches_committed.inc();
        Ok(())
    }
}

fn missing(partition: u32) -> EngineError {
    EngineError::State(rekindle_state::StateError::Corrupt {
        what: "partition table",
        partition,
        reason: "partition not open".into(),
    })
}
