use std::collections::BTreeMap;
use std::time::Duration;

use rekindle_events::{ReactivationTrigger, TRIGGER_SCHEMA_VERSION};
use serde::Deserialize;

use crate::error::invalid;
use crate::{trigger_id, LifecycleStage, RulesError, UserProfile, Windows};

/// Configuration of the `lapsed` rule (`[rules.lapsed_7d]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LapsedConfig {
    /// Distinct active buckets (days) needed in the lookback to be worth winning back.
    pub min_active_days: u32,
    /// Silence after the last activity before the trigger is due.
    #[serde(with = "humantime_serde")]
    pub inactive_for: Duration,
    /// The span, ending with the bucket of the last activity, in which active days count.
    #[serde(with = "humantime_serde")]
    pub lookback: Duration,
}

impl Default for LapsedConfig {
    fn default() -> Self {
        LapsedConfig {
            min_active_days: 3,
            inactive_for: Duration::from_secs(7 * 86_400),
            lookback: Duration::from_secs(30 * 86_400),
        }
    }
}

/// "Was engaged, now silent": a user active on at least `min_active_days` distinct buckets in
/// the lookback ending with their last activity is due a trigger `inactive_for` after that
/// activity, once per episode, unless newer activity arrives first.
#[derive(Debug, Clone)]
pub struct LapsedRule {
    id: String,
    min_active: u32,
    inactive_for_ms: i64,
    lookback_ms: i64,
    lookback_buckets: i64,
    windows: Windows,
}

impl LapsedRule {
    pub fn new(id: &str, config: &LapsedConfig, windows: Windows) -> Result<Self, RulesError> {
        let key = |field: &str| format!("rules.{id}.{field}");
        let lookback_buckets = windows.buckets_in(&key("lookback"), config.lookback)?;
        if lookback_buckets > windows.retained() {
            return Err(invalid(
                key("lookback"),
                "is longer than the buckets state.retained_buckets keeps",
            ));
        }
        if config.min_active_days == 0 || i64::from(config.min_active_days) > lookback_buckets {
            return Err(invalid(
                key("min_active_days"),
                "must be between 1 and the buckets in the lookback",
            ));
        }
        let inactive_for_ms = i64::try_from(config.inactive_for.as_millis()).unwrap_or(i64::MAX);
        if inactive_for_ms <= 0 {
            return Err(invalid(key("inactive_for"), "must be positive"));
        }
        Ok(LapsedRule {
            id: id.to_string(),
            min_active: config.min_active_days,
            inactive_for_ms,
            lookback_ms: lookback_buckets * windows.width_ms(),
            lookback_buckets,
            windows,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Distinct active buckets in the lookback ending with the bucket of the last activity.
    pub fn active_in_lookback(&self, profile: &UserProfile) -> u32 {
        let end = self.windows.bucket_of(profile.last_active_ms);
        profile
            .sums_between(end - self.lookback_buckets + 1, end)
            .active_buckets
    }

    pub fn is_eligible(&self, profile: &UserProfile) -> bool {
        profile.has_activity() && self.active_in_lookback(profile) >= self.min_active
    }

    /// When the current episode's trigger is due, if it is pending.
    pub fn pending_due(&self, profile: &UserProfile) -> Option<i64> {
        let already_fired = profile.lapse.fired_episode_ms == Some(profile.last_active_ms);
        if already_fired || !self.is_eligible(profile) {
            return None;
        }
        Some(profile.last_active_ms.saturating_add(self.inactive_for_ms))
    }

    /// Fires the current episode's trigger if it is due at `now_ms`, and records that it did.
    pub fn fire(
        &self,
        user_id: &str,
        profile: &mut UserProfile,
        now_ms: i64,
    ) -> Option<ReactivationTrigger> {
        let due = self.pending_due(profile).filter(|due| *due <= now_ms)?;
        profile.lapse.fired_episode_ms = Some(profile.last_active_ms);
        Some(self.explain(user_id, profile, due, now_ms))
    }

    fn explain(
        &self,
        user_id: &str,
        profile: &UserProfile,
        due_ms: i64,
        now_ms: i64,
    ) -> ReactivationTrigger {
        let end = self.windows.bucket_of(profile.last_active_ms);
        let sums = profile.sums_between(end - self.lookback_buckets + 1, end);
        let features = BTreeMap::from([
            (
                "active_days_lookback".to_string(),
                f64::from(sums.active_buckets),
            ),
            ("min_active_days".to_string(), f64::from(self.min_active)),
            ("events_lookback".to_string(), sums.events as f64),
            (
                "session_seconds_lookback".to_string(),
                sums.session_seconds as f64,
            ),
            ("amount_lookback".to_string(), sums.amount),
            (
                // In buckets, like the active days: days unless state.bucket_width differs.
                "inactive_days".to_string(),
                (now_ms - profile.last_active_ms) as f64 / self.windows.width_ms() as f64,
            ),
        ]);
        let stage = LifecycleStage::of(profile, now_ms, self.inactive_for_ms, self.lookback_ms);
        ReactivationTrigger {
            trigger_id: trigger_id(&self.id, user_id, profile.last_active_ms),
            user_id: user_id.to_string(),
            rule_id: self.id.clone(),
            fired_at_ms: now_ms,
            due_at_ms: due_ms,
            last_active_ms: profile.last_active_ms,
            lifecycle_stage: stage.as_str().to_string(),
            features,
            schema_version: TRIGGER_SCHEMA_VERSION,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::{WindowConfig, DAY_MS};

    const DAY: i64 = DAY_MS;
    /// 2023-11-14T00:00:00Z
    const T0: i64 = 1_699_920_000_000;

    fn rule() -> LapsedRule {
        let windows = Windows::new(&WindowConfig::default()).expect("windows");
        LapsedRule::new("lapsed_7d", &LapsedConfig::default(), windows).expect("rule")
    }

    fn profile_with(days: &[i64]) -> UserProfile {
        let windows = Windows::new(&WindowConfig::default()).expect("windows");
        let mut p = UserProfile::default();
        for d in days {
            p.record_activity(&windows, T0 + d * DAY + 3_600_000, 10, 0.0);
        }
        p
    }

    #[test]
    fn three_distinct_days_make_a_user_eligible() {
        let r = rule();
        assert!(!r.is_eligible(&profile_with(&[0, 0, 1])));
        assert!(r.is_eligible(&profile_with(&[0, 1, 2])));
        // day 0 is 30 days before day 30: outside the 30 days ending with day 30.
        assert!(!r.is_eligible(&profile_with(&[0, 29, 30])));
        assert!(r.is_eligible(&profile_with(&[1, 29, 30])));
    }

    #[test]
    fn fires_once_at_due_time_with_an_explanation() {
        let r = rule();
        let mut p = profile_with(&[0, 1, 2]);
        let last = T0 + 2 * DAY + 3_600_000;
        assert_eq!(r.pending_due(&p), Some(last + 7 * DAY));
        assert!(r.fire("u", &mut p, last + 7 * DAY - 1).is_none());
        let t = r.fire("u", &mut p, last + 7 * DAY).expect("due");
        assert_eq!(t.trigger_id, trigger_id("lapsed_7d", "u", last));
        assert_eq!(t.due_at_ms, last + 7 * DAY);
        assert_eq!(t.last_active_ms, last);
        assert_eq!(t.lifecycle_stage, "at_risk");
        assert_eq!(t.features["active_days_lookback"], 3.0);
        assert_eq!(t.features["events_lookback"], 3.0);
        assert_eq!(t.features["inactive_days"], 7.0);
        assert!(
            r.fire("u", &mut p, last + 8 * DAY).is_none(),
            "one trigger per episode"
        );
        assert_eq!(r.pending_due(&p), None);
    }

    #[test]
    fn new_activity_starts_a_new_episode() {
        let r = rule();
        let windows = Windows::new(&WindowConfig::default()).expect("windows");
        let mut p = profile_with(&[0, 1, 2]);
        r.fire("u", &mut p, T0 + 20 * DAY).expect("fires");
        p.record_activity(&windows, T0 + 21 * DAY, 0, 0.0);
        assert_eq!(r.pending_due(&p), Some(T0 + 28 * DAY));
    }

    #[test]
    fn rejects_inconsistent_configuration_by_key() {
        let windows = Windows::new(&WindowConfig::default()).expect("windows");
        let too_long = LapsedConfig {
            lookback: Duration::from_secs(36 * 86_400),
            ..LapsedConfig::default()
        };
        let err = LapsedRule::new("x", &too_long, windows).map_err(|e| e.to_string());
        assert_eq!(
            err.err().as_deref(),
            Some("rules.x.lookback: is longer than the buckets state.retained_buckets keeps")
        );
        let zero = LapsedConfig {
            min_active_days: 0,
            ..LapsedConfig::default()
        };
        assert!(LapsedRule::new("x", &zero, windows).is_err());
        let ragged = LapsedConfig {
            lookback: Duration::from_secs(86_400 * 3 / 2),
            ..LapsedConfig::default()
        };
        assert!(LapsedRule::new("x", &ragged, windows).is_err());
    }

    proptest! {
        /// Eligibility equals a brute-force count of distinct UTC days among the events in the
        /// 30 days ending with the day of the last one.
        #[test]
        fn eligibility_matches_brute_force(mut times in proptest::collection::vec(0i64..(90 * DAY), 1..40)) {
            times.sort_unstable();
            let windows = Windows::new(&WindowConfig::default()).expect("windows");
            let r = rule();
            let mut p = UserProfile::default();
            for t in &times {
                p.record_activity(&windows, T0 + t, 0, 0.0);
            }
            let last_day = (T0 + times[times.len() - 1]).div_euclid(DAY);
            let mut days: Vec<i64> = times.iter().map(|t| (T0 + t).div_euclid(DAY)).filter(|d| *d > last_day - 30).collect();
            days.dedup();
            prop_assert_eq!(r.is_eligible(&p), days.len() >= 3);
            let due = r.pending_due(&p);
            prop_assert_eq!(due.is_some(), days.len() >= 3);
            if let Some(due) = due {
                prop_assert_eq!(due, T0 + times[times.len() - 1] + 7 * DAY);
            }
        }
    }
}
