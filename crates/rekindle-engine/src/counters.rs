//! What the engine counts as it goes: Prometheus metrics, lifecycle transitions and its own
//! running totals, kept together so that one evaluation's outcome is reported by one call
//! from wherever the evaluation happened (an event or a timer that fired).

use rekindle_events::AuditRecord;
use rekindle_rules::{CountStep, Outcome, RuleBook, SegmentChange, StageChange, Verdict};
use rekindle_state::PartitionState;
use rekindle_telemetry::{Metrics, StageTransitions};

use crate::engine::EngineStats;
use crate::Emitted;

pub(crate) struct Counters {
    pub(crate) metrics: Metrics,
    /// Lifecycle transition counters, resolved once per transition.
    transitions: StageTransitions,
    pub(crate) stats: EngineStats,
}

impl Counters {
    pub(crate) fn new(metrics: Metrics) -> Counters {
        Counters {
            transitions: StageTransitions::new(&metrics),
            metrics,
            stats: EngineStats::default(),
        }
    }

    /// Counts a planned stage or segment change that came due.
    pub(crate) fn count_step(&mut self, state: &mut PartitionState, step: &CountStep) {
        if let Some(change) = step.stage_change() {
            self.count_stage_change(state, change);
        }
        if let Some(change) = step.segment_change() {
            count_segment_change(state, change);
        }
    }

    fn count_stage_change(&mut self, state: &mut PartitionState, change: StageChange) {
        let (from, to) = (change.from.map(|s| s.index()), change.to.map(|s| s.index()));
        state.count_stage_change(from, to);
        self.transitions.inc(from, to);
    }

    /// Turns one evaluation's outcome into output, metrics and stage counts.
    pub(crate) fn report(
        &mut self,
        rules: &RuleBook,
        state: &mut PartitionState,
        outcome: &mut Outcome,
        out: &mut Emitted,
    ) {
        if let Some(change) = outcome.stage_change {
            self.count_stage_change(state, change);
        }
        for count in outcome.experiments.drain(..) {
            state.growth_mut().count_experiment(&count);
        }
        if let Some(change) = outcome.segment_change {
            count_segment_change(state, change);
        }
        if let Some(back) = &outcome.reactivated {
            self.metrics
                .reactivations
                .with_label_values(&[back.rule.as_str(), back.group.as_str()])
                .inc();
        }
        for (rule, group) in &outcome.attributable {
            self.metrics
                .attributable
                .with_label_values(&[rule.as_str(), group.as_str()])
                .inc();
        }
        for decision in outcome.decisions.drain(..) {
            let rule = decision.trigger.rule_id.as_str();
            match decision.verdict {
                Verdict::Sent => {
                    self.metrics.triggers_fired.with_label_values(&[rule]).inc();
                    self.stats.triggers += 1;
                    out.triggers.push(decision.trigger);
                }
                verdict => {
                    let reason = verdict.reason().map_or("none", |r| r.as_str());
                    self.metrics
                        .suppressed
                        .with_label_values(&[rule, verdict.decision(), reason])
                        .inc();
                    self.stats.suppressed += 1;
                    let release_at_ms = match verdict {
                        Verdict::Deferred { release_ms } => Some(release_ms),
                        _ => None,
                    };
                    let group = rules.holdout_group(&decision.trigger.user_id).as_str();
                    out.audit.push(AuditRecord {
                        trigger: decision.trigger,
                        decision: verdict.decision().to_string(),
                        reason: reason.to_string(),
                        release_at_ms,
                        group: group.to_string(),
                    });
                }
            }
        }
    }
}

/// Segments have no transition counter: the partition's counts are all a change moves.
fn count_segment_change(state: &mut PartitionState, change: SegmentChange) {
    state.count_segment_change(change.from.map(usize::from), change.to.map(usize::from));
}
