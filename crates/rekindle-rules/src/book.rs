//! The rules and the policies together: the one place that decides, for one user at one
//! moment, what fires and what goes out.

use rekindle_events::{ReactivationTrigger, TRIGGER_SCHEMA_VERSION};

use crate::error::invalid;
use crate::policy::{time_zone, Holdout, QuietHours};
use crate::rule::{Candidate, Rule};
use crate::{
    trigger_id, Attribution, Decision, Deferred, ExperimentCount, Group, Lifecycle, Outcome,
    Reactivation, Reason, RuleBookConfig, RuleKey, RuleMode, RulesError, Segments, UserProfile,
    Verdict, Windows,
};
use crate::{CountStep, CountedAs, LifecycleStage, Wake, COUNT_STEPS};

/// One activity as the rules see it.
#[derive(Debug, Clone, Copy)]
pub struct Activity<'a> {
    pub timestamp_ms: i64,
    pub session_seconds: u32,
    pub amount: f64,
    pub timezone: Option<&'a str>,
}

/// The validated rule set with its lifecycle and policies.
#[derive(Debug, Clone)]
pub struct RuleBook {
    windows: Windows,
    /// Highest priority first; ties by id, so the order never depends on the file's order.
    rules: Vec<Rule>,
    /// Every configured rule's name by the key profiles hold, off rules included.
    names: Vec<(RuleKey, String)>,
    lifecycle: Lifecycle,
    cap: Option<(usize, i64)>,
    quiet: Option<QuietHours>,
    holdout: Holdout,
    attribution_ms: i64,
    /// RFM segments; `None` when off.
    segments: Option<Segments>,
    /// Stage and segment changes a plan carries before its full evaluation.
    count_steps: usize,
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl RuleBook {
    pub fn new(windows: Windows, config: &RuleBookConfig) -> Result<RuleBook, RulesError> {
        let mut rules = config
            .rules
            .iter()
            .map(|(id, rule)| Rule::new(id, rule, windows))
            .collect::<Result<Vec<_>, _>>()?;
        // Every configured rule, off ones too: their memories stay in profiles.
        let mut names: Vec<(RuleKey, String)> = Vec::with_capacity(rules.len());
        for rule in &rules {
            if let Some((_, other)) = names.iter().find(|(key, _)| *key == rule.key()) {
                return Err(invalid(
                    format!("rules.{}", rule.id()),
                    format!("its stored key collides with rule {other:?}'s: rename one of them"),
                ));
            }
            names.push((rule.key(), rule.id().to_string()));
        }
        rules.retain(|r| r.mode() != RuleMode::Off);
        let segments = Segments::new(&config.segments, windows)?;
        for rule in &mut rules {
            let Some(names) = config.rules.get(rule.id()).map(|c| &c.segments) else {
                continue;
            };
            if names.is_empty() {
                continue;
            }
            let key = format!("rules.{}.segments", rule.id());
            let Some(segments) = &segments else {
                return Err(invalid(key, "needs [segments] enabled"));
            };
            let mut allowed = Vec::new();
            for name in names {
                let index = segments.index_of(name).ok_or_else(|| {
                    invalid(&key, format!("{name:?} is not a segment of [segments] map"))
                })?;
                allowed.push(index);
            }
            allowed.sort_unstable();
            allowed.dedup();
            rule.restrict_to(allowed, segments.config_hash());
        }
        let zone = &config.policy.quiet_hours.default_timezone;
        let default_tz = time_zone(zone).ok_or_else(|| {
            invalid(
                "policy.quiet_hours.default_timezone",
                format!("{zone:?} is not an IANA time zone"),
            )
        })?;
        for rule in &mut rules {
            rule.set_default_timezone(&default_tz);
        }
        rules.sort_by(|a, b| {
            b.priority()
                .cmp(&a.priority())
                .then_with(|| a.id().cmp(b.id()))
        });
        let cap_config = &config.policy.frequency_cap;
        let cap = if cap_config.max_triggers == 0 {
            None
        } else {
            let window = millis(cap_config.window);
            if window <= 0 {
                return Err(invalid("policy.frequency_cap.window", "must be positive"));
            }
            Some((cap_config.max_triggers as usize, window))
        };
        let attribution_ms = millis(config.policy.attribution.window);
        if attribution_ms <= 0 {
            return Err(invalid("policy.attribution.window", "must be positive"));
        }
        Ok(RuleBook {
            windows,
            rules,
            names,
            lifecycle: Lifecycle::new(&config.lifecycle, windows)?,
            cap,
            quiet: QuietHours::new(&config.policy.quiet_hours)?,
            holdout: Holdout::new(&config.policy.holdout)?,
            attribution_ms,
            segments,
            count_steps: COUNT_STEPS,
        })
    }

    /// The same rules with at most `steps` counted changes planned ahead of each full
    /// evaluation; 0 wakes the user at every change.
    pub fn with_count_steps(mut self, steps: usize) -> RuleBook {
        self.count_steps = steps;
        self
    }

    /// Identifies what decides a user's counted stage and segment and how changes are
    /// planned: timer entries and per-stage and per-segment counts made under another hash
    /// must be rebuilt.
    pub fn plan_hash(&self) -> u64 {
        let segments = self.segments.as_ref().map_or(0, Segments::config_hash);
        xxhash_rust::xxh3::xxh3_64(
            format!("{segments} {:?} {}", self.lifecycle, self.count_steps).as_bytes(),
        )
    }

    pub fn windows(&self) -> &Windows {
        &self.windows
    }

    /// The configured rule (live, shadow or off) a profile's key stands for.
    pub fn rule_name(&self, key: RuleKey) -> Option<&str> {
        self.names
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, name)| name.as_str())
    }

    /// The rules that are evaluated (live or shadow), highest priority first.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }

    pub fn segments(&self) -> Option<&Segments> {
        self.segments.as_ref()
    }

    /// A rule's candidate, unless the rule is restricted to segments the user was not in at
    /// its last activity.
    fn candidate(&self, rule: &Rule, profile: &UserProfile, now_ms: i64) -> Option<Candidate> {
        if !rule.segments().is_empty() {
            let at_last_activity = self
                .segments
                .as_ref()
                .and_then(|s| s.segment_at(profile, profile.last_active_ms))?;
            if !rule.segments().contains(&at_last_activity) {
                return None;
            }
        }
        rule.candidate(profile, now_ms)
    }

    fn experiment(&self, rule: RuleKey) -> Option<&crate::Experiment> {
        self.rules
            .iter()
            .find(|r| r.key() == rule)
            .and_then(Rule::experiment)
    }

    /// A user back within the attribution window after a trigger of `rule_id` (stored as
    /// `key`) counts once as reactivated in its arm of the rule's experiment (if it counted
    /// as triggered in it).
    fn count_reactivation(
        &self,
        user_id: &str,
        profile: &mut UserProfile,
        (key, rule_id): (RuleKey, &str),
        out: &mut Outcome,
    ) {
        let Some(experiment) = self.experiment(key) else {
            return;
        };
        let memory = profile.memory_mut(key);
        if memory.exposed_in != experiment.tag() || memory.reactivated_in == experiment.tag() {
            return;
        }
        memory.reactivated_in = experiment.tag();
        out.experiments.push(ExperimentCount {
            rule: rule_id.to_string(),
            experiment: experiment.id().to_string(),
            arm: experiment.arm_of(user_id).name.clone(),
            reactivated: true,
        });
    }

    /// Moves the user's segment to the one at `now_ms`, reporting the change.
    fn settle_segment(&self, profile: &mut UserProfile, now_ms: i64, out: &mut Outcome) {
        let Some(segments) = &self.segments else {
            return;
        };
        let now = segments.segment_at(profile, now_ms);
        if now != profile.segment {
            out.segment(profile.segment, now);
            profile.segment = now;
        }
    }

    pub fn holdout_group(&self, user_id: &str) -> Group {
        self.holdout.group(user_id)
    }

    /// Applies one activity, then evaluates the user at `now_ms` (the pipeline clock).
    /// Returns the user's next wake-up, as [`RuleBook::next_wake`] would.
    pub fn on_activity(
        &self,
        user_id: &str,
        profile: &mut UserProfile,
        activity: Activity<'_>,
        now_ms: i64,
        out: &mut Outcome,
    ) -> Wake {
        if let Some(zone) = activity.timezone {
            if profile.timezone.as_deref() != Some(zone) && time_zone(zone).is_some() {
                profile.timezone = Some(zone.to_string());
            }
        }
        let newer = activity.timestamp_ms > profile.last_active_ms;
        profile.record_activity(
            &self.windows,
            activity.timestamp_ms,
            activity.session_seconds,
            activity.amount,
        );
        if newer {
            // Exit on return: a trigger held back by quiet hours is moot once the user is back.
            self.cancel_deferred(profile, Reason::Returned, now_ms, out);
            if let Some(attribution) = profile.attribution.take() {
                if activity.timestamp_ms <= attribution.at_ms {
                    profile.attribution = Some(attribution);
                } else if activity.timestamp_ms - attribution.at_ms <= self.attribution_ms {
                    // A rule since removed from the configuration has no figures to count in.
                    if let Some(rule) = self.rule_name(attribution.rule) {
                        let rule_key = (attribution.rule, rule);
                        self.count_reactivation(user_id, profile, rule_key, out);
                        out.reactivated = Some(Reactivation {
                            rule: rule.to_string(),
                            group: attribution.group,
                            triggered_at_ms: attribution.at_ms,
                        });
                    }
                }
            }
        }
        self.evaluate(user_id, profile, now_ms, out)
    }

    /// An `opt_out` event: nothing goes out until `opt_in`; a deferred trigger is cancelled.
    /// Returns the user's next wake-up.
    pub fn on_opt_out(&self, profile: &mut UserProfile, now_ms: i64, out: &mut Outcome) -> Wake {
        profile.opted_out = true;
        self.cancel_deferred(profile, Reason::OptedOut, now_ms, out);
        self.plan(profile, now_ms)
    }

    /// Returns the user's next wake-up.
    pub fn on_opt_in(&self, profile: &mut UserProfile, now_ms: i64) -> Wake {
        profile.opted_out = false;
        self.plan(profile, now_ms)
    }

    /// A `user_deleted` event: reports what the deletion cancels; the caller then removes
    /// the profile and its timer.
    pub fn on_delete(&self, profile: &mut UserProfile, now_ms: i64, out: &mut Outcome) {
        if let Some(deferred) = profile.deferred.as_mut() {
            // Nothing about a deleted user beyond their id leaves the pipeline.
            deferred.trigger.features.clear();
        }
        self.cancel_deferred(profile, Reason::UserDeleted, now_ms, out);
        out.stage(profile.stage.map(|m| crate::StageChange {
            from: Some(m.stage),
            to: None,
        }));
        if profile.segment.is_some() {
            out.segment(profile.segment, None);
        }
    }

    /// Cancels a deferred trigger, if any; the record carries the clock of the cancellation.
    fn cancel_deferred(
        &self,
        profile: &mut UserProfile,
        reason: Reason,
        now_ms: i64,
        out: &mut Outcome,
    ) {
        if let Some(deferred) = profile.deferred.take() {
            let mut trigger = deferred.trigger;
            trigger.fired_at_ms = now_ms;
            self.decide(profile, trigger, Verdict::Cancelled(reason), out);
        }
    }

    /// The user's timer fired: evaluate at `now_ms`.
    /// Returns the user's next wake-up, as [`RuleBook::next_wake`] would.
    pub fn on_wake(
        &self,
        user_id: &str,
        profile: &mut UserProfile,
        now_ms: i64,
        out: &mut Outcome,
    ) -> Wake {
        self.evaluate(user_id, profile, now_ms, out)
    }

    /// When this user needs looking at next without new activity, strictly after
    /// `now_ms`: the earliest rule deadline or deferred release, with the stage and segment
    /// changes before it planned as counted steps (the profile's stored stage and segment,
    /// settled at `now_ms`, are where they start).
    pub fn plan(&self, profile: &UserProfile, now_ms: i64) -> Wake {
        let rules = self
            .rules
            .iter()
            .filter_map(|r| self.candidate(r, profile, now_ms).map(|c| c.due_ms))
            .min();
        self.wake(profile, now_ms, rules)
    }

    /// The time of the user's next timer entry: [`RuleBook::plan`]'s first step or full
    /// evaluation.
    pub fn next_wake(&self, profile: &UserProfile, now_ms: i64) -> Option<i64> {
        self.plan(profile, now_ms).next_ms()
    }

    /// The earliest of the rules' earliest deadline and a deferred release, never at or
    /// before `now_ms`, with the counted changes before it; when more changes come before
    /// it than a plan carries, the first one beyond is a full evaluation instead.
    fn wake(&self, profile: &UserProfile, now_ms: i64, rules: Option<i64>) -> Wake {
        let release = profile.deferred.as_ref().map(|d| d.release_ms);
        let mut full_ms = rules
            .into_iter()
            .chain(release)
            .map(|t| t.max(now_ms.saturating_add(1)))
            .min();
        let mut steps = self.count_steps_before(profile, now_ms, full_ms, self.count_steps + 1);
        if steps.len() > self.count_steps {
            full_ms = steps.get(self.count_steps).map(|s| s.at_ms);
            steps.truncate(self.count_steps);
        }
        Wake { full_ms, steps }
    }

    /// The moments after `now_ms` and before `until` at which the stored stage or segment
    /// changes without new activity, at most `limit` of them.
    fn count_steps_before(
        &self,
        profile: &UserProfile,
        now_ms: i64,
        until: Option<i64>,
        limit: usize,
    ) -> crate::wake::Steps {
        let until = until.unwrap_or(i64::MAX);
        let mut stages: smallvec::SmallVec<[(i64, Option<LifecycleStage>); 4]> =
            smallvec::SmallVec::new();
        self.lifecycle.changes(profile, now_ms, &mut stages);
        let mut segments = crate::segment::SegmentChanges::new();
        if let Some(s) = &self.segments {
            s.changes(profile, now_ms, until, limit, &mut segments);
        }
        let mut state = self.counted(profile);
        let (mut i, mut j) = (0, 0);
        let mut steps = crate::wake::Steps::new();
        while steps.len() < limit {
            let at = match (stages.get(i), segments.get(j)) {
                (Some((a, _)), Some((b, _))) => *a.min(b),
                (Some((a, _)), None) => *a,
                (None, Some((b, _))) => *b,
                (None, None) => break,
            };
            if at >= until {
                break;
            }
            let from = state;
            while let Some((_, stage)) = stages.get(i).filter(|(t, _)| *t == at) {
                state.stage = *stage;
                i += 1;
            }
            while let Some((_, segment)) = segments.get(j).filter(|(t, _)| *t == at) {
                state.segment = Some(*segment);
                j += 1;
            }
            if state != from {
                steps.push(CountStep {
                    at_ms: at,
                    from,
                    to: state,
                });
            }
        }
        steps
    }

    /// The user's stage and segment as stored: what the partition counts them in.
    fn counted(&self, profile: &UserProfile) -> CountedAs {
        CountedAs {
            stage: profile.stage.map(|m| m.stage),
            segment: self.segments.as_ref().and(profile.segment),
        }
    }

    /// Brings a profile read from the store up to `upto` (the partition clock, or just
    /// before a full evaluation that is due): the stage and segment changes counted by
    /// timer steps since the profile was last evaluated are applied to it, without being
    /// reported again. Returns the time of the user's timer entry, which those steps have
    /// moved on from the profile's own: the first change after `upto` before the profile's
    /// full evaluation, else the full evaluation.
    ///
    /// Every entry due at or before `upto` must have fired: the changes until then are then
    /// exactly those counted, because a plan computed from the caught-up profile is the
    /// rest of the plan made when it was evaluated.
    pub fn catch_up(&self, profile: &mut UserProfile, upto: i64) -> Option<i64> {
        if let Some(entry) = profile.timer_entry {
            if entry.is_none_or(|at| at > upto) {
                return entry;
            }
        }
        self.lifecycle.catch_up(profile, upto);
        if let Some(segments) = &self.segments {
            let segment = segments.segment_at(profile, upto);
            if segment.is_some() {
                profile.segment = segment;
            }
        }
        let full = profile.wake_at_ms;
        let entry = self
            .count_steps_before(profile, upto, full, 1)
            .first()
            .map(|s| s.at_ms)
            .or(full);
        profile.timer_entry = Some(entry);
        entry
    }

    /// Each rule's next deadline for this user, if it has one: what `inspect` shows.
    pub fn pending(&self, profile: &UserProfile, now_ms: i64) -> Vec<(&str, i64)> {
        self.rules
            .iter()
            .filter_map(|r| {
                self.candidate(r, profile, now_ms)
                    .map(|c| (r.id(), c.due_ms))
            })
            .collect()
    }

    /// Decides everything due at `now_ms` and returns the next wake-up. Each rule's
    /// candidate is computed once, and again only for a rule that just fired (its memory
    /// changed); a rule's candidate depends on the activity and its own memory alone, so
    /// another rule's decision cannot move it.
    fn evaluate(
        &self,
        user_id: &str,
        profile: &mut UserProfile,
        now_ms: i64,
        out: &mut Outcome,
    ) -> Wake {
        out.stage(self.lifecycle.settle(profile, now_ms));
        self.settle_segment(profile, now_ms, out);
        if profile
            .deferred
            .as_ref()
            .is_some_and(|d| d.release_ms <= now_ms)
        {
            if let Some(deferred) = profile.deferred.take() {
                let mut trigger = deferred.trigger;
                trigger.fired_at_ms = now_ms;
                if self.capped(profile, now_ms) {
                    self.decide(profile, trigger, Verdict::Suppressed(Reason::Capped), out);
                } else {
                    self.deliver(user_id, profile, trigger, now_ms, out);
                }
            }
        }
        let mut slot_taken = profile.deferred.is_some();
        let mut rules_wake: Option<i64> = None;
        for rule in &self.rules {
            let due_later = match self.candidate(rule, profile, now_ms) {
                None => None,
                Some(candidate) if candidate.due_ms > now_ms => Some(candidate.due_ms),
                Some(candidate) => {
                    self.fire(
                        rule,
                        candidate,
                        user_id,
                        profile,
                        now_ms,
                        &mut slot_taken,
                        out,
                    );
                    self.candidate(rule, profile, now_ms).map(|c| c.due_ms)
                }
            };
            rules_wake = rules_wake.into_iter().chain(due_later).min();
        }
        self.wake(profile, now_ms, rules_wake)
    }

    /// One due candidate through the policies, in order.
    #[allow(clippy::too_many_arguments)]
    fn fire(
        &self,
        rule: &Rule,
        candidate: Candidate,
        user_id: &str,
        profile: &mut UserProfile,
        now_ms: i64,
        slot_taken: &mut bool,
        out: &mut Outcome,
    ) {
        let trigger = self.explain(rule, user_id, profile, candidate, now_ms);
        let memory = profile.memory_mut(rule.key());
        memory.episode_ms = candidate.episode_ms;
        memory.fired_at_ms = now_ms;
        let in_cooldown = memory
            .last_sent_ms
            .is_some_and(|sent| now_ms < sent.saturating_add(rule.cooldown_ms()));
        let verdict = if rule.mode() == RuleMode::Shadow {
            Some(Reason::Shadow)
        } else if *slot_taken {
            Some(Reason::Outranked)
        } else if profile.opted_out {
            Some(Reason::OptedOut)
        } else if in_cooldown {
            Some(Reason::Cooldown)
        } else if self.capped(profile, now_ms) {
            Some(Reason::Capped)
        } else {
            None
        };
        if let Some(reason) = verdict {
            self.decide(profile, trigger, Verdict::Suppressed(reason), out);
            return;
        }
        *slot_taken = true;
        let release = self
            .quiet
            .as_ref()
            .and_then(|q| q.release_at(profile.timezone.as_deref(), now_ms));
        match release {
            Some(release_ms) => {
                profile.deferred = Some(Box::new(Deferred {
                    trigger: trigger.clone(),
                    priority: rule.priority(),
                    release_ms,
                }));
                self.decide(profile, trigger, Verdict::Deferred { release_ms }, out);
            }
            None => self.deliver(user_id, profile, trigger, now_ms, out),
        }
    }

    /// Whether the user already had the cap's worth of triggers in its window.
    fn capped(&self, profile: &UserProfile, now_ms: i64) -> bool {
        self.cap.is_some_and(|(max, window)| {
            profile
                .sent_ms
                .iter()
                .filter(|t| now_ms.saturating_sub(**t) < window)
                .count()
                >= max
        })
    }

    /// The last step: the holdout group (and the holdout arm of the rule's experiment)
    /// decides between sending and recording. Either way it counts for caps, cooldowns and
    /// attribution, so the groups and arms are treated alike but for delivery.
    fn deliver(
        &self,
        user_id: &str,
        profile: &mut UserProfile,
        trigger: ReactivationTrigger,
        now_ms: i64,
        out: &mut Outcome,
    ) {
        if let Some((max, window)) = self.cap {
            profile
                .sent_ms
                .retain(|t| now_ms.saturating_sub(*t) < window);
            profile.sent_ms.push(now_ms);
            let excess = profile.sent_ms.len().saturating_sub(max);
            profile.sent_ms.drain(..excess);
        }
        let key = RuleKey::of(&trigger.rule_id);
        profile.memory_mut(key).last_sent_ms = Some(now_ms);
        let global = self.holdout.group(user_id);
        let experiment = self.experiment(key);
        let arm = experiment.map(|e| e.arm_of(user_id));
        if let (Some(experiment), Some(arm), Group::Treatment) = (experiment, arm, global) {
            // The global holdout is the control of the whole pipeline; an experiment counts
            // the users it decides about.
            let memory = profile.memory_mut(key);
            if memory.exposed_in != experiment.tag() {
                memory.exposed_in = experiment.tag();
                memory.reactivated_in = 0;
                out.experiments.push(ExperimentCount {
                    rule: trigger.rule_id.clone(),
                    experiment: experiment.id().to_string(),
                    arm: arm.name.clone(),
                    reactivated: false,
                });
            }
        }
        let group = if arm.is_some_and(|a| a.holdout) {
            Group::Holdout
        } else {
            global
        };
        profile.attribution = Some(Attribution {
            rule: key,
            group,
            at_ms: now_ms,
        });
        out.attributable.push((trigger.rule_id.clone(), group));
        let verdict = match group {
            Group::Treatment => Verdict::Sent,
            Group::Holdout => Verdict::Suppressed(Reason::Holdout),
        };
        self.decide(profile, trigger, verdict, out);
    }

    fn decide(
        &self,
        profile: &mut UserProfile,
        trigger: ReactivationTrigger,
        verdict: Verdict,
        out: &mut Outcome,
    ) {
        profile.note(RuleKey::of(&trigger.rule_id), trigger.fired_at_ms, verdict);
        out.decisions.push(Decision { trigger, verdict });
    }

    fn explain(
        &self,
        rule: &Rule,
        user_id: &str,
        profile: &UserProfile,
        candidate: Candidate,
        now_ms: i64,
    ) -> ReactivationTrigger {
        let stage = profile
            .stage
            .map_or("none", |m| m.stage.as_str())
            .to_string();
        ReactivationTrigger {
            trigger_id: trigger_id(rule.id(), user_id, candidate.episode_ms),
            user_id: user_id.to_string(),
            rule_id: rule.id().to_string(),
            fired_at_ms: now_ms,
            due_at_ms: candidate.due_ms,
            last_active_ms: profile.last_active_ms,
            lifecycle_stage: stage,
            features: rule.features(profile, candidate, now_ms),
            schema_version: TRIGGER_SCHEMA_VERSION,
            rule_config_hash: rule.config_hash().to_string(),
            arm: rule
                .experiment()
                .map(|e| e.arm_of(user_id).name.clone())
                .unwrap_or_default(),
            segment: profile
                .segment
                .and_then(|s| self.segments.as_ref()?.name(s))
                .unwrap_or_default()
                .to_string(),
        }
    }
}
