use std::collections::BTreeMap;

use crate::rule::Candidate;
use crate::{UserProfile, Windows};

/// `new_user_no_return`: a user whose first active bucket (day) ended `return_within` ago
/// without any later activity, while their first activity is at most `first_seen_within`
/// old. Fires at most once per user.
#[derive(Debug, Clone)]
pub(crate) struct NewUserNoReturn {
    pub first_seen_within_ms: i64,
    pub return_within_ms: i64,
    pub windows: Windows,
}

impl NewUserNoReturn {
    fn first_day_end(&self, profile: &UserProfile) -> i64 {
        (self.windows.bucket_of(profile.first_active_ms) + 1)
            .saturating_mul(self.windows.width_ms())
    }

    pub fn candidate(
        &self,
        profile: &UserProfile,
        ever_fired: bool,
        now_ms: i64,
    ) -> Option<Candidate> {
        if !profile.has_activity() || ever_fired {
            return None;
        }
        let first_day_end = self.first_day_end(profile);
        if profile.last_active_ms >= first_day_end {
            return None;
        }
        // A user first seen longer ago than the rule's horizon (a backfill, a clock that
        // jumped) is no longer new: judging them now would be noise.
        if now_ms.saturating_sub(profile.first_active_ms) > self.first_seen_within_ms {
            return None;
        }
        Some(Candidate {
            episode_ms: profile.first_active_ms,
            due_ms: first_day_end.saturating_add(self.return_within_ms),
        })
    }

    pub fn features(&self, profile: &UserProfile, now_ms: i64) -> BTreeMap<String, f64> {
        let first = self.windows.bucket_of(profile.first_active_ms);
        let sums = profile.sums_between(first, first);
        const HOUR: f64 = 3_600_000.0;
        BTreeMap::from([
            ("first_day_events".to_string(), sums.events as f64),
            (
                "first_day_session_seconds".to_string(),
                sums.session_seconds as f64,
            ),
            (
                "hours_since_first_active".to_string(),
                (now_ms - profile.first_active_ms) as f64 / HOUR,
            ),
            (
                "return_within_hours".to_string(),
                self.return_within_ms as f64 / HOUR,
            ),
        ])
    }
}
