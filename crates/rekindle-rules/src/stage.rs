use serde::{Deserialize, Serialize};

use crate::error::invalid;
use crate::{LifecycleConfig, RulesError, StageMemory, UserProfile, Windows};

/// Where a user is in their lifecycle. Every user with activity has exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LifecycleStage {
    New,
    Active,
    AtRisk,
    Dormant,
    Churned,
}

impl LifecycleStage {
    pub const ALL: [LifecycleStage; 5] = [
        LifecycleStage::New,
        LifecycleStage::Active,
        LifecycleStage::AtRisk,
        LifecycleStage::Dormant,
        LifecycleStage::Churned,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            LifecycleStage::New => "new",
            LifecycleStage::Active => "active",
            LifecycleStage::AtRisk => "at_risk",
            LifecycleStage::Dormant => "dormant",
            LifecycleStage::Churned => "churned",
        }
    }

    pub fn index(&self) -> usize {
        match self {
            LifecycleStage::New => 0,
            LifecycleStage::Active => 1,
            LifecycleStage::AtRisk => 2,
            LifecycleStage::Dormant => 3,
            LifecycleStage::Churned => 4,
        }
    }

    /// At risk or worse: the stages a returning user has to recover from.
    fn is_lapsing(&self) -> bool {
        matches!(
            self,
            LifecycleStage::AtRisk | LifecycleStage::Dormant | LifecycleStage::Churned
        )
    }
}

/// A change of stage, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageChange {
    pub from: Option<LifecycleStage>,
    pub to: Option<LifecycleStage>,
}

/// Validated lifecycle thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifecycle {
    new_for_ms: i64,
    at_risk_ms: i64,
    dormant_ms: i64,
    churned_ms: i64,
    recover_days: u32,
    recover_buckets: i64,
    windows: Windows,
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Lifecycle {
    pub fn new(config: &LifecycleConfig, windows: Windows) -> Result<Lifecycle, RulesError> {
        let (new_for_ms, at_risk_ms, dormant_ms, churned_ms) = (
            millis(config.new_for),
            millis(config.at_risk_after),
            millis(config.dormant_after),
            millis(config.churned_after),
        );
        if new_for_ms <= 0 {
            return Err(invalid("lifecycle.new_for", "must be positive"));
        }
        if !(0 < at_risk_ms && at_risk_ms < dormant_ms && dormant_ms < churned_ms) {
            return Err(invalid(
                "lifecycle.at_risk_after",
                "at_risk_after < dormant_after < churned_after must hold, all positive",
            ));
        }
        let recover_buckets =
            windows.buckets_in("lifecycle.recover_within", config.recover_within)?;
        if recover_buckets > windows.retained() {
            return Err(invalid(
                "lifecycle.recover_within",
                "is longer than the buckets state.retained_buckets keeps",
            ));
        }
        if config.recover_active_days == 0
            || i64::from(config.recover_active_days) > recover_buckets
        {
            return Err(invalid(
                "lifecycle.recover_active_days",
                "must be between 1 and the buckets in recover_within",
            ));
        }
        Ok(Lifecycle {
            new_for_ms,
            at_risk_ms,
            dormant_ms,
            churned_ms,
            recover_days: config.recover_active_days,
            recover_buckets,
            windows,
        })
    }

    /// The stage a user is in at `now_ms`, given the stage they were last in.
    ///
    /// Silence moves a user down at fixed thresholds. Moving up is where the hysteresis
    /// is: a user who was at risk or worse becomes active only after recovering (active on
    /// `recover_active_days` buckets within `recover_within`); one visit makes them at risk.
    pub fn stage_at(&self, profile: &UserProfile, now_ms: i64) -> Option<LifecycleStage> {
        let lapsing = profile.stage.is_some_and(|m| m.stage.is_lapsing());
        self.stage_given(profile, lapsing, now_ms)
    }

    /// [`Lifecycle::stage_at`] for a user whose last stage was lapsing (or not).
    fn stage_given(
        &self,
        profile: &UserProfile,
        lapsing: bool,
        now_ms: i64,
    ) -> Option<LifecycleStage> {
        if !profile.has_activity() {
            return None;
        }
        let silent = now_ms.saturating_sub(profile.last_active_ms);
        if silent >= self.churned_ms {
            return Some(LifecycleStage::Churned);
        }
        if silent >= self.dormant_ms {
            return Some(LifecycleStage::Dormant);
        }
        if silent >= self.at_risk_ms {
            return Some(LifecycleStage::AtRisk);
        }
        if lapsing && !self.recovered(profile) {
            return Some(LifecycleStage::AtRisk);
        }
        if now_ms.saturating_sub(profile.first_active_ms) < self.new_for_ms {
            Some(LifecycleStage::New)
        } else {
            Some(LifecycleStage::Active)
        }
    }

    fn recovered(&self, profile: &UserProfile) -> bool {
        let end = self.windows.bucket_of(profile.last_active_ms);
        profile
            .sums_between(end - self.recover_buckets + 1, end)
            .active_buckets
            >= self.recover_days
    }

    /// Brings the stored stage up to `now_ms` and returns the change, if any.
    pub fn settle(&self, profile: &mut UserProfile, now_ms: i64) -> Option<StageChange> {
        let from = profile.stage.map(|m| m.stage);
        let to = self.stage_at(profile, now_ms);
        if from == to {
            return None;
        }
        profile.stage = to.map(|stage| StageMemory {
            stage,
            since_ms: now_ms,
        });
        Some(StageChange { from, to })
    }

    /// The stage changes silence alone brings after `now_ms`, starting from the stored
    /// stage: each moment with the stage from then on, ascending.
    pub(crate) fn changes(
        &self,
        profile: &UserProfile,
        now_ms: i64,
        out: &mut smallvec::SmallVec<[(i64, Option<LifecycleStage>); 4]>,
    ) {
        if !profile.has_activity() {
            return;
        }
        let last = profile.last_active_ms;
        let mut moments = [
            profile.first_active_ms.saturating_add(self.new_for_ms),
            last.saturating_add(self.at_risk_ms),
            last.saturating_add(self.dormant_ms),
            last.saturating_add(self.churned_ms),
        ];
        moments.sort_unstable();
        let mut current = profile.stage.map(|m| m.stage);
        for at in moments.into_iter().filter(|t| *t > now_ms) {
            let lapsing = current.is_some_and(|s| s.is_lapsing());
            let stage = self.stage_given(profile, lapsing, at);
            if stage != current {
                out.push((at, stage));
                current = stage;
            }
        }
    }

    /// Brings the stored stage to `now_ms` without reporting a change: for a user whose
    /// changes since its last evaluation were counted already, by timer steps that did not
    /// read the profile. Silence is all that can have moved it, so the stage is dated by
    /// the threshold that brought it.
    pub(crate) fn catch_up(&self, profile: &mut UserProfile, now_ms: i64) {
        let to = self.stage_at(profile, now_ms);
        if to == profile.stage.map(|m| m.stage) {
            return;
        }
        let last = profile.last_active_ms;
        profile.stage = to.map(|stage| StageMemory {
            stage,
            since_ms: match stage {
                LifecycleStage::Churned => last.saturating_add(self.churned_ms),
                LifecycleStage::Dormant => last.saturating_add(self.dormant_ms),
                LifecycleStage::AtRisk => last.saturating_add(self.at_risk_ms),
                LifecycleStage::Active | LifecycleStage::New => profile
                    .first_active_ms
                    .saturating_add(self.new_for_ms)
                    .min(now_ms),
            },
        });
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::{WindowConfig, DAY_MS};

    const DAY: i64 = DAY_MS;
    const T0: i64 = 1_699_920_000_000;

    fn lifecycle() -> (Lifecycle, Windows) {
        let w = Windows::new(&WindowConfig::default()).expect("windows");
        (
            Lifecycle::new(&LifecycleConfig::default(), w).expect("lifecycle"),
            w,
        )
    }

    #[test]
    fn silence_moves_a_user_down_at_the_thresholds() {
        let (l, w) = lifecycle();
        let mut p = UserProfile::default();
        p.record_activity(&w, T0, 0, 0.0);
        assert_eq!(l.stage_at(&p, T0), Some(LifecycleStage::New));
        assert_eq!(l.stage_at(&p, T0 + 7 * DAY - 1), Some(LifecycleStage::New));
        assert_eq!(l.stage_at(&p, T0 + 7 * DAY), Some(LifecycleStage::AtRisk));
        assert_eq!(l.stage_at(&p, T0 + 30 * DAY), Some(LifecycleStage::Dormant));
        assert_eq!(l.stage_at(&p, T0 + 90 * DAY), Some(LifecycleStage::Churned));
        l.settle(&mut p, T0);
        let mut changes = smallvec::SmallVec::new();
        l.changes(&p, T0, &mut changes);
        assert_eq!(
            changes.as_slice(),
            [
                (T0 + 7 * DAY, Some(LifecycleStage::AtRisk)),
                (T0 + 30 * DAY, Some(LifecycleStage::Dormant)),
                (T0 + 90 * DAY, Some(LifecycleStage::Churned)),
            ],
            "new_for and at_risk_after both end on day 7: one change"
        );
        changes.clear();
        l.changes(&p, T0 + 90 * DAY, &mut changes);
        assert!(changes.is_empty());
        assert_eq!(l.stage_at(&UserProfile::default(), T0), None);
    }

    #[test]
    fn a_returning_user_needs_to_recover_before_being_active_again() {
        let (l, w) = lifecycle();
        let mut p = UserProfile::default();
        for d in 0..10 {
            p.record_activity(&w, T0 + d * DAY, 0, 0.0);
        }
        assert_eq!(
            l.settle(&mut p, T0 + 9 * DAY).map(|c| c.to),
            Some(Some(LifecycleStage::Active))
        );
        // Silent for 8 days: at risk.
        l.settle(&mut p, T0 + 17 * DAY);
        assert_eq!(p.stage.map(|m| m.stage), Some(LifecycleStage::AtRisk));
        // One visit: still at risk (no flapping back to active on a single event).
        p.record_activity(&w, T0 + 17 * DAY + 10, 0, 0.0);
        assert_eq!(l.settle(&mut p, T0 + 17 * DAY + 10), None);
        assert_eq!(p.stage.map(|m| m.stage), Some(LifecycleStage::AtRisk));
        // A second active day within a week: recovered.
        p.record_activity(&w, T0 + 18 * DAY, 0, 0.0);
        let change = l.settle(&mut p, T0 + 18 * DAY).expect("recovers");
        assert_eq!(change.from, Some(LifecycleStage::AtRisk));
        assert_eq!(change.to, Some(LifecycleStage::Active));
    }

    #[test]
    fn a_user_at_the_edge_of_the_threshold_does_not_flap() {
        // Visits every 8 days: at risk between visits, and a single visit is not enough
        // to be active again, so the stage stays at_risk instead of alternating.
        let (l, w) = lifecycle();
        let mut p = UserProfile::default();
        for d in 0..5 {
            p.record_activity(&w, T0 + d * DAY, 0, 0.0);
        }
        l.settle(&mut p, T0 + 4 * DAY);
        let mut changes = 0;
        for visit in 1..10 {
            let t = T0 + 4 * DAY + visit * 8 * DAY;
            changes += usize::from(l.settle(&mut p, t - 1).is_some());
            p.record_activity(&w, t, 0, 0.0);
            changes += usize::from(l.settle(&mut p, t).is_some());
        }
        assert_eq!(changes, 1, "only the first fall to at_risk");
    }

    #[test]
    fn rejects_thresholds_out_of_order() {
        let w = Windows::new(&WindowConfig::default()).expect("windows");
        let bad = LifecycleConfig {
            dormant_after: std::time::Duration::from_secs(86_400),
            ..LifecycleConfig::default()
        };
        assert!(Lifecycle::new(&bad, w).is_err());
    }

    proptest! {
        /// Without new activity the stage changes exactly at the moments `changes` names,
        /// to the stage named, and always matches the silence thresholds when it is
        /// down-bound.
        #[test]
        fn stage_only_changes_at_announced_times(days in proptest::collection::vec(0i64..40, 1..20), probe in 0i64..(120 * DAY)) {
            let (l, w) = lifecycle();
            let mut p = UserProfile::default();
            let mut days = days;
            days.sort_unstable();
            for d in &days {
                p.record_activity(&w, T0 + d * DAY, 0, 0.0);
                l.settle(&mut p, T0 + d * DAY);
            }
            let last = T0 + days[days.len() - 1] * DAY;
            let t = last + probe;
            l.settle(&mut p, t);
            let before = l.stage_at(&p, t);
            let mut changes = smallvec::SmallVec::new();
            l.changes(&p, t, &mut changes);
            let mut stage = before;
            let mut since = t;
            for (at, to) in &changes {
                prop_assert!(*at > since);
                prop_assert_eq!(l.stage_at(&p, at - 1), stage, "unchanged until {}", at);
                prop_assert_ne!(*to, stage);
                stage = *to;
                since = *at;
                let mut later = p.clone();
                l.settle(&mut later, *at);
                prop_assert_eq!(later.stage.map(|m| m.stage), *to);
            }
            let mut end = p.clone();
            l.settle(&mut end, t + 1000 * DAY);
            prop_assert_eq!(end.stage.map(|m| m.stage), stage, "no change after the last");
            let silent = t - last;
            let expected_floor = if silent >= 90 * DAY { Some(LifecycleStage::Churned) }
                else if silent >= 30 * DAY { Some(LifecycleStage::Dormant) }
                else if silent >= 7 * DAY { Some(LifecycleStage::AtRisk) }
                else { None };
            if expected_floor.is_some() {
                prop_assert_eq!(before, expected_floor);
            }
        }
    }
}
