use std::collections::BTreeMap;

use crate::rule::Candidate;
use crate::{UserProfile, Windows};

/// `lapsed` and `dormant`: a user active on at least `min_active` distinct buckets in the
/// lookback ending with their last activity is due `inactive_for` after that activity, once
/// per episode (an episode starts at each new latest activity), unless newer activity
/// arrives first.
#[derive(Debug, Clone)]
pub(crate) struct SilenceRule {
    pub min_active: u32,
    pub inactive_for_ms: i64,
    pub lookback_buckets: i64,
    pub windows: Windows,
}

impl SilenceRule {
    /// Distinct active buckets in the lookback ending with the bucket of the last activity.
    pub fn active_in_lookback(&self, profile: &UserProfile) -> u32 {
        let end = self.windows.bucket_of(profile.last_active_ms);
        profile
            .sums_between(end - self.lookback_buckets + 1, end)
            .active_buckets
    }

    pub fn candidate(
        &self,
        profile: &UserProfile,
        fired_episode: Option<i64>,
    ) -> Option<Candidate> {
        if !profile.has_activity() || fired_episode == Some(profile.last_active_ms) {
            return None;
        }
        if self.active_in_lookback(profile) < self.min_active {
            return None;
        }
        Some(Candidate {
            episode_ms: profile.last_active_ms,
            due_ms: profile.last_active_ms.saturating_add(self.inactive_for_ms),
        })
    }

    pub fn features(&self, profile: &UserProfile, now_ms: i64) -> BTreeMap<String, f64> {
        let end = self.windows.bucket_of(profile.last_active_ms);
        let sums = profile.sums_between(end - self.lookback_buckets + 1, end);
        BTreeMap::from([
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
        ])
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

    fn lapsed_7d(windows: Windows) -> SilenceRule {
        SilenceRule {
            min_active: 3,
            inactive_for_ms: 7 * DAY,
            lookback_buckets: 30,
            windows,
        }
    }

    proptest! {
        /// Eligibility equals a brute-force count of distinct UTC days among the events in
        /// the 30 days ending with the day of the last one, and the deadline is the last
        /// event plus 7 days.
        #[test]
        fn eligibility_matches_brute_force(mut times in proptest::collection::vec(0i64..(90 * DAY), 1..40)) {
            times.sort_unstable();
            let windows = Windows::new(&WindowConfig::default()).expect("windows");
            let rule = lapsed_7d(windows);
            let mut p = UserProfile::default();
            for t in &times {
                p.record_activity(&windows, T0 + t, 0, 0.0);
            }
            let last = T0 + times[times.len() - 1];
            let last_day = last.div_euclid(DAY);
            let mut days: Vec<i64> = times
                .iter()
                .map(|t| (T0 + t).div_euclid(DAY))
                .filter(|d| *d > last_day - 30)
                .collect();
            days.dedup();
            let candidate = rule.candidate(&p, None);
            prop_assert_eq!(candidate.is_some(), days.len() >= 3);
            if let Some(c) = candidate {
                prop_assert_eq!(c.due_ms, last + 7 * DAY);
                prop_assert_eq!(c.episode_ms, last);
                prop_assert!(rule.candidate(&p, Some(last)).is_none(), "fired episodes stay fired");
            }
        }
    }
}
