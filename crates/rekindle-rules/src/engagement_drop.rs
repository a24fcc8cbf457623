use std::collections::BTreeMap;

use jiff::tz::TimeZone;
use jiff::Timestamp;

use crate::policy::time_zone;
use crate::rule::Candidate;
use crate::{UserProfile, Windows, DAY_MS};

/// `engagement_drop`: at a bucket boundary, the session seconds of the `recent` buckets
/// before it are below `fraction` of the average per `recent`-long period over the
/// `baseline` buckets before those, for a user with a full baseline whose average is at
/// least `min_baseline`, and who was active at least once in the recent window (a user
/// with no activity at all is silent, not less engaged: `lapsed` and `dormant` cover them). With default settings: the last 7 days against the weekly average
/// of the 4 weeks before.
///
/// The next boundary at which this holds is computed from the profile when activity
/// arrives, so a user is woken once at that boundary instead of every day. After it fires,
/// it fires again only once the user has been active since, and not before the rule's
/// cooldown has passed.
#[derive(Debug, Clone)]
pub(crate) struct EngagementDrop {
    pub fraction: f64,
    pub min_baseline: u64,
    pub recent: i64,
    /// Number of `recent`-long periods in the baseline.
    pub periods: i64,
    pub windows: Windows,
    /// The zone of users whose events never named one.
    pub default_tz: TimeZone,
}

/// The figures at one boundary.
struct Measure {
    recent: u64,
    baseline_avg: f64,
    active_recent: u32,
}

impl EngagementDrop {
    fn baseline(&self) -> i64 {
        self.recent * self.periods
    }

    /// Figures for the boundary at the start of bucket `b`.
    fn measure(&self, profile: &UserProfile, b: i64) -> Measure {
        let recent = profile.sums_between(b - self.recent, b - 1);
        let base = profile.sums_between(b - self.recent - self.baseline(), b - self.recent - 1);
        Measure {
            recent: recent.session_seconds,
            baseline_avg: base.session_seconds as f64 / self.periods as f64,
            active_recent: recent.active_buckets,
        }
    }

    fn holds(&self, profile: &UserProfile, b: i64) -> bool {
        // "too new": a profile younger than the rule's whole window is never judged.
        if self.windows.bucket_of(profile.first_active_ms) > b - self.recent - self.baseline() {
            return false;
        }
        let m = self.measure(profile, b);
        m.baseline_avg >= self.min_baseline as f64
            && (m.recent as f64) < self.fraction * m.baseline_avg
    }

    /// `rearm_ms` (the rule's cooldown) keeps a persisting drop from being re-evaluated
    /// every day after it fired: the next boundary considered is at least that far on.
    pub fn candidate(
        &self,
        profile: &UserProfile,
        fired_boundary: Option<i64>,
        rearm_ms: i64,
    ) -> Option<Candidate> {
        if !profile.has_activity() {
            return None;
        }
        let width = self.windows.width_ms();
        let latest = self.windows.bucket_of(profile.last_active_ms);
        let mut from = latest + 1;
        if let Some(fired) = fired_boundary {
            if profile.last_active_ms < fired {
                return None;
            }
            let rearm = fired.saturating_add(rearm_ms.max(1));
            // The first boundary at or after the re-arm time.
            from = from.max(rearm.saturating_add(width - 1).div_euclid(width));
        }
        // A drop is judged while the user is still around: once the recent window holds no
        // activity at all the user is silent, which is what lapsed and dormant are for.
        let last = latest + self.recent;
        (from..=last).find(|b| self.holds(profile, *b)).map(|b| {
            let boundary = b.saturating_mul(width);
            Candidate {
                episode_ms: boundary,
                due_ms: self.local_day_start(profile, boundary),
            }
        })
    }

    /// With daily buckets, the user's first local midnight at or after the UTC boundary
    /// whose completed days are judged: the drop is evaluated at a day boundary in the
    /// user's time zone (activity before then re-evaluates it). Other bucket widths (the
    /// demo's seconds) have no local day; the boundary itself is used.
    fn local_day_start(&self, profile: &UserProfile, boundary_ms: i64) -> i64 {
        if self.windows.width_ms() != DAY_MS {
            return boundary_ms;
        }
        let tz = profile
            .timezone
            .as_deref()
            .and_then(time_zone)
            .unwrap_or_else(|| self.default_tz.clone());
        let Ok(instant) = Timestamp::from_millisecond(boundary_ms) else {
            return boundary_ms;
        };
        let local = instant.to_zoned(tz);
        let start = if local.time() == jiff::civil::Time::midnight() {
            Ok(local)
        } else {
            local.tomorrow().and_then(|d| d.start_of_day())
        };
        start.map_or(boundary_ms, |z| z.timestamp().as_millisecond())
    }

    pub fn features(&self, profile: &UserProfile, boundary_ms: i64) -> BTreeMap<String, f64> {
        let m = self.measure(profile, boundary_ms.div_euclid(self.windows.width_ms()));
        let ratio = if m.baseline_avg > 0.0 {
            m.recent as f64 / m.baseline_avg
        } else {
            0.0
        };
        BTreeMap::from([
            ("session_seconds_recent".to_string(), m.recent as f64),
            ("session_seconds_baseline_avg".to_string(), m.baseline_avg),
            ("recent_to_baseline_ratio".to_string(), ratio),
            ("drop_below_fraction".to_string(), self.fraction),
            ("active_days_recent".to_string(), f64::from(m.active_recent)),
        ])
    }
}
