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
