use std::collections::HashMap;

use rekindle_events::{ActivityView, EventDecoder, EventError, EventKind};
use rekindle_rules::{
    Activity, Growth, GrowthFigures, Outcome, RuleBook, Wake, MAX_SEGMENTS, RETENTION_DAYS,
};
use rekindle_state::{ChangelogRecord, PartitionState, Store};
use rekindle_telemetry::{Metrics, PartitionSeries};
use tracing::{debug, info, warn};

use crate::counters::Counters;
use crate::{Emitted, EngineError, Record, RecordKind};

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
    pub rules: RuleBook,
    pub decoder: EventDecoder,
    /// An event time more than this ahead of the record's ingest time is clamped to it
    /// before it moves the clock (the event still counts as activity at its own time).
    pub max_future_skew_ms: i64,
    /// Growth figures (active users, retention); `None`: analytics are off.
    pub growth: Option<Growth>,
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
    /// Decisions that did not send a trigger (audit records).
    pub suppressed: u64,
}

pub struct Engine {
    store: Store,
    config: EngineConfig,
    partitions: HashMap<u32, PartitionState>,
    /// Metric series resolved once per partition, not once per record.
    partition_series: HashMap<u32, PartitionSeries>,
    /// Metrics, lifecycle transitions and running totals.
    counters: Counters,
    /// Reused across evaluations so the per-event path does not allocate for it.
    outcome: Outcome,
    /// Every arm of the configured experiments: (rule, experiment, arm).
    arms: Vec<(String, String, String)>,
    /// The same as metric labels: (rule, arm).
    arm_labels: Vec<(String, String)>,
}

impl Engine {
    pub fn new(store: Store, config: EngineConfig, metrics: Metrics) -> Engine {
        initialise_rule_series(&metrics, &config.rules);
        if config.growth.is_some() {
            for reason in ["too_late", "ahead"] {
                metrics.growth_uncounted.with_label_values(&[reason]);
            }
        }
        let arms: Vec<(String, String, String)> = config
            .rules
            .rules()
            .iter()
            .filter_map(|rule| Some((rule.id(), rule.experiment()?)))
            .flat_map(|(rule, e)| {
                e.arms()
                    .iter()
                    .map(move |a| (rule.to_string(), e.id().to_string(), a.name.clone()))
            })
            .collect();
        let arm_labels = arms
            .iter()
            .map(|(rule, _, arm)| (rule.clone(), arm.clone()))
            .collect();
        Engine {
            arms,
            arm_labels,
            store,
            config,
            partitions: HashMap::new(),
            partition_series: HashMap::new(),
            counters: Counters::new(metrics),
            outcome: Outcome::default(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn rules(&self) -> &RuleBook {
        &self.config.rules
    }

    /// Opens a partition's state and returns the offset to resume from, if state has one.
    pub fn open_partition(&mut self, partition: u32) -> Result<Option<i64>, EngineError> {
        let state = self.partition(partition)?;
        Ok(state.resume_offset())
    }

    /// Drops the current batch's changes: every open partition goes back to its stored
    /// state (after a failed transaction, before the batch is read again).
    pub fn rollback(&mut self) -> Result<(), EngineError> {
        let open: Vec<u32> = self.partitions.keys().copied().collect();
        self.partitions.clear();
        for partition in open {
            self.partition(partition)?;
        }
        Ok(())
    }

    /// Forgets a partition. Call [`Engine::commit`] first: uncommitted changes are dropped.
    pub fn close_partition(&mut self, partition: u32) {
        self.partitions.remove(&partition);
        self.partition_series.remove(&partition);
        // Another worker reports this partition's users from now on.
        self.counters
            .metrics
            .forget_partition(partition, self.segment_names(), &self.arm_labels);
    }

    pub fn partitions(&self) -> impl Iterator<Item = u32> + '_ {
        self.partitions.keys().copied()
    }

    pub fn stats(&self) -> EngineStats {
        self.counters.stats
    }

    /// Each open partition's next offset to process, for progress reporting.
    pub fn positions(&self) -> Vec<(u32, i64)> {
        self.partitions
            .iter()
            .filter_map(|(p, state)| state.resume_offset().map(|next| (*p, next)))
            .collect()
    }

    /// Profiles the current batch of `partition` has loaded: what the next commit writes.
    pub fn profiles_touched(&self, partition: u32) -> usize {
        self.partitions
            .get(&partition)
            .map_or(0, PartitionState::dirty_profiles)
    }

    /// Profiles the current batch changed across all open partitions: what the next commit
    /// encodes, sends and writes, and what its memory grows with.
    pub fn dirty_profiles(&self) -> usize {
        self.partitions
            .values()
            .map(PartitionState::dirty_profiles)
            .sum()
    }

    /// Profiles held in memory across all open partitions.
    pub fn cached_profiles(&self) -> usize {
        self.partitions
            .values()
            .map(PartitionState::cached_profiles)
            .sum()
    }

    /// Memory held by stored profile forms across all open partitions, in bytes.
    pub fn stored_profile_bytes(&self) -> usize {
        self.partitions
            .values()
            .map(PartitionState::stored_profile_bytes)
            .sum()
    }

    pub fn clock_ms(&self, partition: u32) -> Option<i64> {
        self.partitions
            .get(&partition)
            .map(PartitionState::clock_ms)
    }

    fn segment_names(&self) -> &[String] {
        self.config.rules.segments().map_or(&[], |s| s.names())
    }

    fn partition(&mut self, partition: u32) -> Result<&mut PartitionState, EngineError> {
        if !self.partitions.contains_key(&partition) {
            let mut state = PartitionState::open(&self.store, partition)?;
            if state.meta().plan_hash != self.config.rules.plan_hash() {
                replan(&mut state, &self.config.rules)?;
            }
            if let Some(growth) = &self.config.growth {
                let stored = state.growth().timezone.as_str();
                if !stored.is_empty() && stored != growth.timezone() {
                    return Err(EngineError::GrowthZone {
                        partition,
                        stored: stored.to_string(),
                        configured: growth.timezone().to_string(),
                    });
                }
            }
            self.partitions.insert(partition, state);
            // Kept through a rollback, which reopens the partition: resolving them again
            // would count this engine as holding them twice.
            if !self.partition_series.contains_key(&partition) {
                let series = self.counters.metrics.partition_series(
                    &self.config.topic,
                    partition,
                    self.segment_names(),
                    &self.arm_labels,
                );
                self.partition_series.insert(partition, series);
            }
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
        out: &mut Emitted,
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
        self.counters.stats.records += 1;
        if resume.is_some_and(|next| offset < next) {
            self.counters.metrics.records_skipped_replayed.inc();
            self.counters.stats.skipped_replayed += 1;
            return Ok(Disposition::Skipped);
        }
        if let Some(next) = resume.filter(|next| offset > *next) {
            // Legitimate after compaction or transaction markers; otherwise a sign of loss.
            debug!(topic = %self.config.topic, partition, expected = next, got = offset, "offset gap");
        }
        let disposition = match kind {
            RecordKind::Tick(time_ms) => {
                self.counters.metrics.clock_ticks_processed.inc();
                self.counters.stats.ticks += 1;
                self.advance_clock(partition, time_ms, out)?;
                Disposition::Applied { event_ms: None }
            }
            RecordKind::Avro {
                payload,
                timestamp_ms,
            } => match self.config.decoder.decode_view(payload) {
                Ok(event) => self.apply(partition, offset, event, timestamp_ms, out)?,
                Err(error) => self.malformed(partition, offset, error),
            },
            RecordKind::Event { event, ingest_ms } => {
                self.apply(partition, offset, event.view(), ingest_ms, out)?
            }
            RecordKind::Unreadable(error) => self.malformed(partition, offset, error),
        };
        self.partition(partition)?
            .set_next_offset(offset.saturating_add(1));
        Ok(disposition)
    }

    /// Counts and logs a record that cannot be used; the caller dead-letters it.
    fn malformed(&mut self, partition: u32, offset: i64, error: EventError) -> Disposition {
        self.counters.stats.malformed += 1;
        self.counters
            .metrics
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
        event: ActivityView<'_>,
        ingest_ms: Option<i64>,
        out: &mut Emitted,
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
        let rules = &self.config.rules;
        let outcome = &mut self.outcome;
        outcome.clear();
        let state = self
            .partitions
            .get_mut(&partition)
            .ok_or_else(|| missing(partition))?;
        let now = state.clock_ms();
        let user = event.user_id;
        let growth = self
            .config
            .growth
            .as_ref()
            .filter(|_| event.kind() == EventKind::Activity);
        let (profile, figures) = match growth {
            Some(_) => {
                let (profile, figures) = state.profile_and_growth_mut(user)?;
                (profile, Some(figures))
            }
            None => (state.profile_mut(user)?, None),
        };
        if profile
            .applied_offset
            .is_some_and(|applied| offset <= applied)
        {
            // Restored from a changelog that ran ahead of the partition's position: this
            // user's profile already has the event.
            self.counters.metrics.records_skipped_replayed.inc();
            self.counters.stats.skipped_replayed += 1;
            return Ok(Disposition::Skipped);
        }
        profile.applied_offset = Some(offset);
        // The user's timer entry, which counted steps may have moved on from the profile's.
        let wake_before = rules.catch_up(profile, now);
        if let (Some(growth), Some(figures)) = (growth, figures) {
            let counted = growth.record(&mut profile.active_days, event.timestamp_ms, now, figures);
            if let Some(reason) = counted.uncounted_reason() {
                self.counters
                    .metrics
                    .growth_uncounted
                    .with_label_values(&[reason])
                    .inc();
            }
        }
        // `None`: the user is deleted; otherwise the user's next wake-up.
        let next = match event.kind() {
            EventKind::Activity => {
                let activity = Activity {
                    timestamp_ms: event.timestamp_ms,
                    session_seconds: u32::try_from(event.session_seconds).unwrap_or(0),
                    amount: event.amount,
                    timezone: event.timezone,
                };
                Some(rules.on_activity(user, profile, activity, now, outcome))
            }
            EventKind::OptOut => Some(rules.on_opt_out(profile, now, outcome)),
            EventKind::OptIn => Some(rules.on_opt_in(profile, now)),
            EventKind::UserDeleted => {
                rules.on_delete(profile, now, outcome);
                None
            }
        };
        match next {
            Some(next) => {
                profile.wake_at_ms = next.full_ms;
                profile.timer_entry = Some(next.next_ms());
                state.move_timer(user, wake_before, entry(next));
            }
            None => {
                state.move_timer(user, wake_before, None);
                state.delete_profile(user);
            }
        }
        self.counters.report(rules, state, outcome, out);
        if let Some(series) = self.partition_series.get(&partition) {
            series.processed.inc();
        }
        self.counters.stats.events += 1;
        Ok(Disposition::Applied {
            event_ms: Some(event.timestamp_ms),
        })
    }

    /// Moves the partition clock forward to `time_ms` (never back) and fires what is due.
    pub fn advance_clock(
        &mut self,
        partition: u32,
        time_ms: i64,
        out: &mut Emitted,
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
        out: &mut Emitted,
    ) -> Result<(), EngineError> {
        let state = self
            .partitions
            .get_mut(&partition)
            .ok_or_else(|| missing(partition))?;
        if !state.may_have_due(now_ms) {
            return Ok(());
        }
        let rules = &self.config.rules;
        // One at a time: a counted step re-arms the user's entry at its next step, which
        // may be due too.
        while let Some(timer) = state.pop_due(now_ms)? {
            if !timer.value.is_empty() {
                let plan = Wake::decode(timer.due_ms, &timer.value)?;
                if let Some(step) = plan.steps.first() {
                    self.counters.count_step(state, step);
                }
                state.move_timer(&timer.user_id, None, entry(plan.after_first_step()));
                continue;
            }
            let outcome = &mut self.outcome;
            outcome.clear();
            let profile = state.profile_mut(&timer.user_id)?;
            if profile.wake_at_ms != Some(timer.due_ms) {
                // A stale index entry: the user's timer moved after it was written.
                continue;
            }
            // The steps before this evaluation were counted without the profile.
            rules.catch_up(profile, timer.due_ms.saturating_sub(1));
            let next = rules.on_wake(&timer.user_id, profile, now_ms, outcome);
            profile.wake_at_ms = next.full_ms;
            profile.timer_entry = Some(next.next_ms());
            state.move_timer(&timer.user_id, None, entry(next));
            self.counters.report(rules, state, outcome, out);
        }
        Ok(())
    }

    /// The current batch's changes as changelog records, per partition (only partitions
    /// the batch changed). Call before [`Engine::commit`].
    pub fn changelog(&mut self) -> Result<Vec<(u32, Vec<ChangelogRecord>)>, EngineError> {
        let mut out = Vec::new();
        for (partition, state) in &mut self.partitions {
            let records = state.changelog_records()?;
            if !records.is_empty() {
                out.push((*partition, records));
            }
        }
        out.sort_by_key(|(p, _)| *p);
        Ok(out)
    }

    /// Writes every open partition's batch. Call once the batch's triggers are safely out.
    /// `changelog_next`: per partition, the changelog offset after this batch's records.
    pub fn commit(&mut self, changelog_next: &[(u32, i64)]) -> Result<(), EngineError> {
        for (partition, state) in &mut self.partitions {
            let next = changelog_next
                .iter()
                .find(|(p, _)| p == partition)
                .map(|(_, n)| *n);
            if let Some(growth) = &self.config.growth {
                let clock = state.clock_ms();
                if growth.needs_settling(state.growth(), clock) {
                    growth.settle(state.growth_mut(), clock);
                }
            }
            state.flush(next)?;
            if let Some(series) = self.partition_series.get(partition) {
                if let Some(growth) = &self.config.growth {
                    report_growth(growth, state.growth(), state.clock_ms(), series);
                }
                series.clock_time.set(state.clock_ms() as f64 / 1000.0);
                series.pending_timers.set(state.meta().pending_timers);
                for (gauge, users) in series.stage_users.iter().zip(state.meta().stage_users) {
                    gauge.set(users);
                }
                for (gauge, users) in series.segment_users.iter().zip(state.meta().segment_users) {
                    gauge.set(users);
                }
                for ([users, back], (rule, experiment, arm)) in
                    series.arm_users.iter().zip(&self.arms)
                {
                    let counts = state.growth().arm(rule, experiment, arm);
                    users.set(i64::try_from(counts.users).unwrap_or(i64::MAX));
                    back.set(i64::try_from(counts.reactivated).unwrap_or(i64::MAX));
                }
            }
        }
        self.counters.metrics.batches_committed.inc();
        Ok(())
    }
}

/// The timer entry that follows a plan: at its first step or full evaluation.
fn entry(plan: Wake) -> Option<(i64, Vec<u8>)> {
    plan.next_ms().map(|at| (at, plan.encode()))
}

/// Profiles rewritten per flush while planning every user anew.
const REPLAN_CHUNK: usize = 10_000;

/// Brings every stored user's stage and segment to the clock under the configured lifecycle
/// and segments, plans its timer entry anew and recounts the partition's users per stage
/// and per segment: at open, when the stored plans were made under another configuration
/// (or are unknown, after a restore). The old entries cannot be found from the profiles
/// (their steps were planned under the old configuration), so the index is emptied first.
/// Written in chunks straight to the store, not to the changelog: a restore elsewhere marks
/// its plans unknown and makes them the same way.
fn replan(state: &mut PartitionState, rules: &RuleBook) -> Result<(), EngineError> {
    let clock = state.clock_ms();
    state.clear_timers()?;
    let segments = rules.segments();
    let mut stages = [0i64; 5];
    let mut counts = [0i64; MAX_SEGMENTS];
    let mut after: Option<String> = None;
    let mut users = 0usize;
    loop {
        let chunk = state.stored_users(after.as_deref(), REPLAN_CHUNK)?;
        let Some(last) = chunk.last().cloned() else {
            break;
        };
        for user in &chunk {
            let profile = state.profile_mut(user)?;
            // A profile restored from a changelog that ran ahead of the partition's position
            // is later than the clock: its stage and segment stand, and its plan starts from
            // the latest moment it is known to have been judged at.
            let judged = judged_at(profile);
            let ahead = judged > clock;
            let from = if ahead {
                judged
            } else {
                rules.lifecycle().settle(profile, clock);
                clock
            };
            if let Some(segments) = segments.filter(|_| !ahead || profile.segment.is_none()) {
                profile.segment = segments.segment_at(profile, from);
            }
            let wake = rules.plan(profile, from);
            profile.wake_at_ms = wake.full_ms;
            profile.timer_entry = Some(wake.next_ms());
            if let Some(slot) = profile.stage.and_then(|m| stages.get_mut(m.stage.index())) {
                *slot += 1;
            }
            if let Some(slot) = profile
                .segment
                .filter(|_| segments.is_some())
                .and_then(|s| counts.get_mut(usize::from(s)))
            {
                *slot += 1;
            }
            state.move_timer(user, None, entry(wake));
        }
        users += chunk.len();
        state.flush(None)?;
        after = Some(last);
    }
    state.set_plan_counts(stages, counts, rules.plan_hash());
    state.flush(None)?;
    if users > 0 {
        info!(
            partition = state.partition(),
            users, "stages, segments and timers planned anew under the configured [lifecycle] and [segments]"
        );
    }
    Ok(())
}

/// The latest moment a profile shows it was judged at: its last activity, its stage's
/// start, its rules' last firing and its latest decision. Later than the partition clock
/// only in a profile restored from a changelog that ran ahead of the partition's position.
fn judged_at(profile: &rekindle_rules::UserProfile) -> i64 {
    let stage = profile.stage.map(|m| m.since_ms);
    let fired = profile.rules.iter().map(|m| m.fired_at_ms).max();
    let decided = profile.recent.iter().map(|n| n.at_ms).max();
    [stage, fired, decided]
        .into_iter()
        .flatten()
        .fold(profile.last_active_ms, i64::max)
}

/// Sets a partition's growth gauges from its figures at the clock.
fn report_growth(
    growth: &Growth,
    figures: &GrowthFigures,
    clock_ms: i64,
    series: &PartitionSeries,
) {
    let Some(today) = growth.day_of(clock_ms) else {
        return;
    };
    let now = figures.day(today);
    for (gauge, value) in series.active_users.iter().zip([now.dau, now.wau, now.mau]) {
        gauge.set(i64::from(value));
    }
    for (i, k) in RETENTION_DAYS.iter().enumerate() {
        // The latest cohort whose day k has ended: its day k is yesterday.
        let latest = today - 1 - k;
        for (span, cohorts) in [(0, 1), (1, 7)] {
            let (mut users, mut returned) = (0i64, 0i64);
            for cohort in latest - cohorts + 1..=latest {
                let counts = figures.cohort(cohort);
                users += i64::from(counts.users);
                returned += i64::from(counts.returned[i]);
            }
            series.cohort_users[i][span].set(users);
            series.cohort_returned[i][span].set(returned);
        }
    }
}

/// Every series a rule can produce starts at zero, so dashboards and `rate()` see a rule
/// from the start instead of from its first decision of each kind.
fn initialise_rule_series(metrics: &Metrics, rules: &RuleBook) {
    use rekindle_rules::Reason;
    const NOT_SENT: [(&str, Reason); 10] = [
        ("suppressed", Reason::Shadow),
        ("suppressed", Reason::OptedOut),
        ("suppressed", Reason::Cooldown),
        ("suppressed", Reason::Capped),
        ("suppressed", Reason::Outranked),
        ("suppressed", Reason::Holdout),
        ("deferred", Reason::QuietHours),
        ("cancelled", Reason::Returned),
        ("cancelled", Reason::OptedOut),
        ("cancelled", Reason::UserDeleted),
    ];
    for rule in rules.rules() {
        let id = rule.id();
        metrics.triggers_fired.with_label_values(&[id]);
        for (decision, reason) in NOT_SENT {
            metrics
                .suppressed
                .with_label_values(&[id, decision, reason.as_str()]);
        }
        for group in ["treatment", "holdout"] {
            metrics.attributable.with_label_values(&[id, group]);
            metrics.reactivations.with_label_values(&[id, group]);
        }
    }
}

fn missing(partition: u32) -> EngineError {
    EngineError::State(rekindle_state::StateError::Corrupt {
        what: "partition table",
        partition,
        reason: "partition not open".into(),
    })
}
