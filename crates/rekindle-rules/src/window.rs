use std::time::Duration;

use serde::Deserialize;

use crate::error::invalid;
use crate::RulesError;

/// How activity is bucketed in each user's profile.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Width of one activity bucket. Buckets are aligned to the Unix epoch, so the default of
    /// one day makes them UTC calendar days. Tests and demos shrink it to seconds.
    #[serde(with = "humantime_serde")]
    pub bucket_width: Duration,
    /// How many buckets, ending with the user's latest active one, a profile keeps.
    pub retained_buckets: u32,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            bucket_width: Duration::from_secs(86_400),
            retained_buckets: 35,
        }
    }
}

/// Validated bucket arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    width_ms: i64,
    retained: i64,
}

/// A profile must keep at least five weeks: the longest lookback the rules are specified for.
pub const MIN_RETAINED_BUCKETS: u32 = 35;

impl Windows {
    pub fn new(config: &WindowConfig) -> Result<Windows, RulesError> {
        let width_ms = i64::try_from(config.bucket_width.as_millis()).unwrap_or(i64::MAX);
        if width_ms < 1 {
            return Err(invalid("state.bucket_width", "must be at least 1ms"));
        }
        if config.retained_buckets < MIN_RETAINED_BUCKETS || config.retained_buckets > 400 {
            return Err(invalid(
                "state.retained_buckets",
                format!("must be between {MIN_RETAINED_BUCKETS} and 400"),
            ));
        }
        Ok(Windows {
            width_ms,
            retained: i64::from(config.retained_buckets),
        })
    }

    pub fn width_ms(&self) -> i64 {
        self.width_ms
    }

    pub fn retained(&self) -> i64 {
        self.retained
    }

    /// The bucket holding `ts_ms`. Floor division, so times before the epoch stay ordered.
    pub fn bucket_of(&self, ts_ms: i64) -> i64 {
        ts_ms.div_euclid(self.width_ms)
    }

    /// The number of whole buckets in `span`, or an error naming `key` when `span` is not a
    /// positive multiple of the bucket width.
    pub fn buckets_in(&self, key: &str, span: Duration) -> Result<i64, RulesError> {
        let span_ms = i64::try_from(span.as_millis()).unwrap_or(i64::MAX);
        if span_ms <= 0 || span_ms % self.width_ms != 0 {
            return Err(invalid(
                key,
                "must be a positive multiple of state.bucket_width",
            ));
        }
        Ok(span_ms / self.width_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn windows(width_ms: u64) -> Windows {
        Windows::new(&WindowConfig {
            bucket_width: Duration::from_millis(width_ms),
            retained_buckets: 35,
        })
        .expect("valid")
    }

    #[test]
    fn daily_buckets_are_utc_days() {
        let w = windows(86_400_000);
        // 2024-03-10T23:59:59.999Z and 2024-03-11T00:00:00Z
        assert_eq!(
            w.bucket_of(1_710_115_199_999) + 1,
            w.bucket_of(1_710_115_200_000)
        );
        assert_eq!(w.bucket_of(-1), -1);
    }

    #[test]
    fn rejects_bad_configuration_by_key() {
        let zero = WindowConfig {
            bucket_width: Duration::ZERO,
            retained_buckets: 35,
        };
        assert_eq!(
            Windows::new(&zero).map_err(|e| e.to_string()),
            Err("state.bucket_width: must be at least 1ms".to_string())
        );
        let short = WindowConfig {
            retained_buckets: 20,
            ..WindowConfig::default()
        };
        assert!(Windows::new(&short).is_err());
        let w = windows(1000);
        assert!(w
            .buckets_in("rules.x.lookback", Duration::from_millis(1500))
            .is_err());
        assert_eq!(w.buckets_in("k", Duration::from_secs(30)), Ok(30));
    }

    proptest! {
        #[test]
        fn bucket_of_contains_its_time(ts in -1_000_000_000_000i64..4_000_000_000_000, width in 1u64..100_000_000) {
            let w = windows(width);
            let b = w.bucket_of(ts);
            prop_assert!(b * w.width_ms() <= ts);
            prop_assert!(ts < (b + 1) * w.width_ms());
        }

        #[test]
        fn bucket_of_is_monotone(a in 0i64..4_000_000_000_000, d in 0i64..1_000_000_000, width in 1u64..100_000_000) {
            let w = windows(width);
            prop_assert!(w.bucket_of(a) <= w.bucket_of(a + d));
        }
    }
}
