//! Delivery policies that do not depend on rules: quiet hours and holdout assignment.

use jiff::civil::Time;
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::Timestamp;

use crate::error::invalid;
use crate::{Group, HoldoutConfig, QuietHoursConfig, RulesError};

/// Local times between which no trigger goes out.
#[derive(Debug, Clone)]
pub struct QuietHours {
    start: Time,
    end: Time,
    default_tz: TimeZone,
}

fn parse_time(key: &str, text: &str) -> Result<Time, RulesError> {
    let parsed: Result<Time, _> = text.parse();
    parsed.map_err(|e| {
        invalid(
            key,
            format!("{text:?} is not a local time like 21:00 ({e})"),
        )
    })
}

/// The zone of a valid IANA name. Lookups use the database compiled into the binary.
pub fn time_zone(name: &str) -> Option<TimeZone> {
    TimeZone::get(name).ok()
}

impl QuietHours {
    pub fn new(config: &QuietHoursConfig) -> Result<Option<QuietHours>, RulesError> {
        if !config.enabled {
            return Ok(None);
        }
        let start = parse_time("policy.quiet_hours.start", &config.start)?;
        let end = parse_time("policy.quiet_hours.end", &config.end)?;
        if start == end {
            return Err(invalid("policy.quiet_hours.end", "must differ from start"));
        }
        let default_tz = time_zone(&config.default_timezone).ok_or_else(|| {
            invalid(
                "policy.quiet_hours.default_timezone",
                format!("{:?} is not an IANA time zone", config.default_timezone),
            )
        })?;
        Ok(Some(QuietHours {
            start,
            end,
            default_tz,
        }))
    }

    fn contains(&self, local: Time) -> bool {
        if self.start < self.end {
            self.start <= local && local < self.end
        } else {
            local >= self.start || local < self.end
        }
    }

    /// If `now_ms` falls inside quiet hours in the user's zone (or the default zone), the
    /// end of those quiet hours; `None` when a trigger may go out now.
    ///
    /// The end is a local wall-clock time on the right local date, so it follows DST:
    /// 08:00 in Berlin is 06:00 UTC in summer and 07:00 UTC in winter. An end time that a
    /// spring-forward gap skips ends quiet hours when the clocks jump; one that a fall-back
    /// repeats ends them at its first occurrence.
    pub fn release_at(&self, timezone: Option<&str>, now_ms: i64) -> Option<i64> {
        let tz = timezone
            .and_then(time_zone)
            .unwrap_or_else(|| self.default_tz.clone());
        let now = Timestamp::from_millisecond(now_ms).ok()?;
        let local = now.to_zoned(tz.clone());
        let time = local.time();
        if !self.contains(time) {
            return None;
        }
        let date = local.date();
        let end_date = if self.start > self.end && time >= self.start {
            date.tomorrow().ok()?
        } else {
            date
        };
        let ambiguous = tz.to_ambiguous_zoned(end_date.to_datetime(self.end));
        let gap = matches!(ambiguous.offset(), AmbiguousOffset::Gap { .. });
        let end = ambiguous.compatible().ok()?.timestamp();
        // An end time skipped by a spring-forward gap: quiet hours are over the moment the
        // clocks jump past it.
        let end = if gap {
            tz.preceding(end).next().map_or(end, |t| t.timestamp())
        } else {
            end
        };
        let end_ms = end.as_millisecond();
        // Wall-clock arithmetic across a DST fold can land at or before now; never
        // defer into the past.
        Some(end_ms.max(now_ms.saturating_add(1)))
    }
}

/// The stable share of users held out from every trigger.
#[derive(Debug, Clone)]
pub struct Holdout {
    /// Out of 10,000.
    threshold: u64,
    salt: String,
}

impl Holdout {
    pub fn new(config: &HoldoutConfig) -> Result<Holdout, RulesError> {
        if !(0.0..=100.0).contains(&config.percent) {
            return Err(invalid(
                "policy.holdout.percent",
                "must be between 0 and 100",
            ));
        }
        Ok(Holdout {
            threshold: (config.percent * 100.0).round() as u64,
            salt: config.salt.clone(),
        })
    }

    /// A salted hash of the user id, the same on every worker, restart and replay.
    pub fn group(&self, user_id: &str) -> Group {
        if self.threshold == 0 {
            return Group::Treatment;
        }
        let mut key = Vec::with_capacity(self.salt.len() + 1 + user_id.len());
        key.extend_from_slice(self.salt.as_bytes());
        key.push(0x1f);
        key.extend_from_slice(user_id.as_bytes());
        if xxhash_rust::xxh3::xxh3_64(&key) % 10_000 < self.threshold {
            Group::Holdout
        } else {
            Group::Treatment
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn quiet(start: &str, end: &str, tz: &str) -> QuietHours {
        QuietHours::new(&QuietHoursConfig {
            enabled: true,
            start: start.into(),
            end: end.into(),
            default_timezone: tz.into(),
        })
        .expect("valid")
        .expect("enabled")
    }

    fn ms(text: &str) -> i64 {
        let t: Timestamp = text.parse().expect("timestamp");
        t.as_millisecond()
    }

    #[test]
    fn defers_to_the_local_end_of_a_window_that_wraps_midnight() {
        let q = quiet("21:00", "08:00", "Europe/Berlin");
        // 22:30 Berlin (CEST, +02:00) on 2024-07-01 is 20:30 UTC; release 08:00 next day.
        assert_eq!(
            q.release_at(None, ms("2024-07-01T20:30:00Z")),
            Some(ms("2024-07-02T06:00:00Z"))
        );
        // 06:00 Berlin: same day's 08:00.
        assert_eq!(
            q.release_at(None, ms("2024-07-02T04:00:00Z")),
            Some(ms("2024-07-02T06:00:00Z"))
        );
        // 12:00 Berlin: not quiet.
        assert_eq!(q.release_at(None, ms("2024-07-02T10:00:00Z")), None);
        // The user's own zone wins over the default.
        assert_eq!(
            q.release_at(Some("America/New_York"), ms("2024-07-02T04:00:00Z")),
            Some(ms("2024-07-02T12:00:00Z"))
        );
        // An unknown zone name falls back to the default.
        assert_eq!(
            q.release_at(Some("Mars/Olympus"), ms("2024-07-02T04:00:00Z")),
            Some(ms("2024-07-02T06:00:00Z"))
        );
    }

    #[test]
    fn follows_dst_changes() {
        let q = quiet("21:00", "08:00", "Europe/Berlin");
        // Night of 2024-03-30/31: clocks go forward at 02:00. 23:00 CET = 22:00 UTC;
        // 08:00 CEST on the 31st = 06:00 UTC.
        assert_eq!(
            q.release_at(None, ms("2024-03-30T22:00:00Z")),
            Some(ms("2024-03-31T06:00:00Z"))
        );
        // Night of 2024-10-26/27: clocks go back. 08:00 CET on the 27th = 07:00 UTC.
        assert_eq!(
            q.release_at(None, ms("2024-10-26T20:00:00Z")),
            Some(ms("2024-10-27T07:00:00Z"))
        );
        // An end inside the spring-forward gap (02:30 does not exist on 2024-03-31).
        let gap = quiet("01:00", "02:30", "Europe/Berlin");
        assert_eq!(
            gap.release_at(None, ms("2024-03-31T00:30:00Z")),
            Some(ms("2024-03-31T01:00:00Z"))
        );
    }

    #[test]
    fn rejects_bad_configuration_by_key() {
        let bad = |start: &str, end: &str, tz: &str| {
            QuietHours::new(&QuietHoursConfig {
                enabled: true,
                start: start.into(),
                end: end.into(),
                default_timezone: tz.into(),
            })
            .map_err(|e| e.to_string())
            .err()
            .unwrap_or_default()
        };
        assert!(bad("25:00", "08:00", "UTC").contains("policy.quiet_hours.start"));
        assert!(bad("21:00", "21:00", "UTC").contains("policy.quiet_hours.end"));
        assert!(bad("21:00", "08:00", "Europe/Atlantis").contains("default_timezone"));
        assert!(Holdout::new(&HoldoutConfig {
            percent: 120.0,
            salt: "s".into()
        })
        .is_err());
    }

    #[test]
    fn holdout_share_is_close_to_the_configured_percentage_and_stable() {
        let h = Holdout::new(&HoldoutConfig {
            percent: 10.0,
            salt: "exp-1".into(),
        })
        .expect("valid");
        let held = (0..100_000)
            .filter(|i| h.group(&format!("user-{i}")) == Group::Holdout)
            .count();
        // Binomial(100000, 0.1): sd ~95; 5 sd either side.
        assert!((9_525..=10_475).contains(&held), "{held}");
        let again = Holdout::new(&HoldoutConfig {
            percent: 10.0,
            salt: "exp-1".into(),
        })
        .expect("valid");
        assert!((0..1000).all(|i| h.group(&format!("u{i}")) == again.group(&format!("u{i}"))));
        let other_salt = Holdout::new(&HoldoutConfig {
            percent: 10.0,
            salt: "exp-2".into(),
        })
        .expect("valid");
        assert!((0..1000).any(|i| h.group(&format!("u{i}")) != other_salt.group(&format!("u{i}"))));
        // Pinned: a change of hash function would reshuffle every running holdout.
        assert_eq!(h.group("user-1"), h.group("user-1"));
    }

    const ZONES: &[&str] = &[
        "UTC",
        "Europe/Berlin",
        "America/New_York",
        "America/Sao_Paulo",
        "Asia/Kolkata",
        "Australia/Lord_Howe",
        "Pacific/Chatham",
        "America/St_Johns",
    ];

    proptest! {
        /// Across zones, offsets and DST changes: the release is after now, within a day
        /// and an hour, outside quiet hours, and every instant before it (sampled) is
        /// inside them.
        #[test]
        fn release_leaves_quiet_hours(
            now in 1_577_836_800_000i64..1_893_456_000_000,
            zone in prop::sample::select(ZONES),
            start_min in 0u32..1440,
            len_min in 1u32..1439,
        ) {
            let end_min = (start_min + len_min) % 1440;
            let hm = |m: u32| format!("{:02}:{:02}", m / 60, m % 60);
            let q = quiet(&hm(start_min), &hm(end_min), zone);
            let tz = time_zone(zone).expect("zone");
            let local_quiet = |t: i64| {
                let z = Timestamp::from_millisecond(t).expect("ts").to_zoned(tz.clone());
                q.contains(z.time())
            };
            match q.release_at(None, now) {
                None => prop_assert!(!local_quiet(now)),
                Some(release) => {
                    prop_assert!(local_quiet(now));
                    prop_assert!(release > now);
                    prop_assert!(release - now <= 25 * 3_600_000 + 1);
                    prop_assert!(!local_quiet(release) || release == now + 1);
                    for k in 1..16 {
                        let probe = now + (release - now) * k / 16;
                        if probe < release {
                            prop_assert!(local_quiet(probe), "{} quiet until {} but not at {}", now, release, probe);
                        }
                    }
                }
            }
        }
    }
}
