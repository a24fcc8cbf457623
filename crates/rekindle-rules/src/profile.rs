use rekindle_events::ReactivationTrigger;
use serde::{Deserialize, Serialize};

use crate::{ActiveDays, LifecycleStage, Verdict, Windows};

/// A rule as profiles hold it: four bytes of a hash of its name. Names were about a third
/// of a profile's bytes (every episode memory, attribution and decision note repeated one);
/// the rule book resolves keys to names and refuses two rules whose keys collide.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RuleKey([u8; 4]);

impl RuleKey {
    /// The stored form (see [`crate::encode_profile`]).
    pub fn to_bytes(self) -> [u8; 4] {
        self.0
    }

    pub fn from_bytes(bytes: [u8; 4]) -> RuleKey {
        RuleKey(bytes)
    }

    pub fn of(name: &str) -> RuleKey {
        // The low half of XXH3-64: stable across platforms and releases, as stored keys must be.
        let hash = xxhash_rust::xxh3::xxh3_64(name.as_bytes()) as u32;
        RuleKey(hash.to_le_bytes())
    }
}

impl std::fmt::Display for RuleKey {
    /// How a key shows when no configured rule has it (the rule was removed or renamed).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rule#{:08x}", u32::from_le_bytes(self.0))
    }
}

/// Activity in one bucket (a UTC day by default). A bucket exists only if the user was active
/// in it, so presence is the active flag.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub index: i64,
    pub events: u32,
    pub session_seconds: u64,
    pub amount: f64,
}

/// What one rule remembers about one user.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleMemory {
    pub rule: RuleKey,
    /// The episode this rule last fired for (its start: last activity, first activity or
    /// the day boundary, by kind), so that one episode never fires twice, whatever replays
    /// or late events do.
    pub episode_ms: i64,
    /// Pipeline clock when that episode fired.
    pub fired_at_ms: i64,
    /// When a trigger of this rule last went out (or would have, for a held-out user): the
    /// start of the rule's cooldown.
    pub last_sent_ms: Option<i64>,
    /// The experiment (its tag) this user was counted in as triggered, and as reactivated;
    /// 0: not counted. Each user counts once per experiment and arm.
    pub exposed_in: u32,
    pub reactivated_in: u32,
}

/// A trigger held back by quiet hours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deferred {
    pub trigger: ReactivationTrigger,
    pub priority: i32,
    /// The end of the quiet hours, when it goes out unless the user returned first.
    pub release_ms: i64,
}

/// Whether a user receives triggers or is held out to measure their effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Group {
    Treatment,
    Holdout,
}

impl Group {
    pub fn as_str(&self) -> &'static str {
        match self {
            Group::Treatment => "treatment",
            Group::Holdout => "holdout",
        }
    }
}

/// The latest trigger sent (or held out) for a user, waiting for the user to come back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attribution {
    pub rule: RuleKey,
    pub group: Group,
    pub at_ms: i64,
}

/// One of a user's latest decisions, kept for `rekindle inspect`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionNote {
    pub rule: RuleKey,
    pub at_ms: i64,
    /// Shown as [`Verdict::label`], e.g. `sent` or `suppressed:capped`.
    pub verdict: Verdict,
}

/// How many decisions a profile remembers.
pub const RECENT_DECISIONS: usize = 8;

/// The user's lifecycle stage and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageMemory {
    pub stage: LifecycleStage,
    pub since_ms: i64,
}

/// Everything rekindle keeps about one user. Stored by [`crate::encode_profile`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserProfile {
    /// Event time of the earliest activity seen; 0 when none.
    pub first_active_ms: i64,
    /// Event time of the latest activity seen: the start of the current episode; 0 when none.
    pub last_active_ms: i64,
    /// Active buckets, ascending by index, at most `retained` of them ending with the latest.
    pub buckets: Vec<Bucket>,
    /// The user's next full evaluation, if any. The user's single entry in the timer index is
    /// here or at a counted stage or segment change before it, which
    /// [`crate::RuleBook::catch_up`] finds, so the entry is removed without searching the
    /// index.
    pub wake_at_ms: Option<i64>,
    /// `None` until the first activity.
    pub stage: Option<StageMemory>,
    /// Per-rule episode memory, one entry per rule that ever fired for the user.
    pub rules: Vec<RuleMemory>,
    /// Times of the triggers sent (or held out) inside the frequency-cap window, oldest first.
    pub sent_ms: Vec<i64>,
    /// Boxed: rare, and the largest field, which every profile in memory would carry.
    pub deferred: Option<Box<Deferred>>,
    pub attribution: Option<Attribution>,
    /// The IANA zone named by the user's latest event that named a valid one.
    pub timezone: Option<String>,
    pub opted_out: bool,
    /// Latest decisions, oldest first, at most [`RECENT_DECISIONS`].
    pub recent: Vec<DecisionNote>,
    /// Offset (in the user's partition) of the latest event applied to this profile. A
    /// profile restored from a changelog can be ahead of its partition's stored offset (a
    /// batch that crashed after its changelog records were sent): its own events at or
    /// below this offset are then already in it and are not applied twice.
    pub applied_offset: Option<i64>,
    /// Active days in the reporting zone, for the growth figures; `None` until the first
    /// activity, or when analytics are off.
    pub active_days: Option<ActiveDays>,
    /// The RFM segment (index into the configured names) at the last evaluation; `None`
    /// before the first activity or when segments are off.
    pub segment: Option<u8>,
    /// Where this process last put the user's timer entry (`Some(None)`: no entry), while
    /// the profile stays in memory: when that is still ahead, no counted step has fired and
    /// catching up has nothing to do. Never stored; `None`: unknown.
    pub timer_entry: Option<Option<i64>>,
}

/// What recording one activity did to the profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// The event is newer than any before it: a new episode starts and any pending lapse of
    /// the previous one is void.
    pub new_episode: bool,
    /// The event fell before the retained buckets and only moved `first_active_ms`.
    pub beyond_horizon: bool,
}

/// Sums over a range of buckets.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BucketSums {
    pub active_buckets: u32,
    pub events: u64,
    pub session_seconds: u64,
    pub amount: f64,
}

impl UserProfile {
    pub fn has_activity(&self) -> bool {
        self.last_active_ms > 0
    }

    pub fn memory(&self, rule: RuleKey) -> Option<&RuleMemory> {
        self.rules.iter().find(|m| m.rule == rule)
    }

    pub fn memory_mut(&mut self, rule: RuleKey) -> &mut RuleMemory {
        let at = match self.rules.iter().position(|m| m.rule == rule) {
            Some(at) => at,
            None => {
                self.rules.push(RuleMemory {
                    rule,
                    ..RuleMemory::default()
                });
                self.rules.len() - 1
            }
        };
        &mut self.rules[at]
    }

    pub fn note(&mut self, rule: RuleKey, at_ms: i64, verdict: Verdict) {
        if self.recent.len() >= RECENT_DECISIONS {
            self.recent.remove(0);
        }
        self.recent.push(DecisionNote {
            rule,
            at_ms,
            verdict,
        });
    }

    pub fn latest_bucket(&self) -> Option<i64> {
        self.buckets.last().map(|b| b.index)
    }

    /// Adds one activity at event time `ts_ms`. Events may arrive out of order: a late event
    /// still lands in its bucket as long as that bucket is within the retained horizon.
    pub fn record_activity(
        &mut self,
        windows: &Windows,
        ts_ms: i64,
        session_seconds: u32,
        amount: f64,
    ) -> Recorded {
        let new_episode = ts_ms > self.last_active_ms;
        if !self.has_activity() || ts_ms < self.first_active_ms {
            self.first_active_ms = ts_ms;
        }
        if new_episode {
            self.last_active_ms = ts_ms;
        }
        let index = windows.bucket_of(ts_ms);
        // Most events land in the latest bucket or open the next one: both are decided by
        // the last bucket alone. A profile's buckets span many cache lines, and each one a
        // search touches is a miss for a profile not seen in a while.
        let bucket = match self.buckets.last().map(|b| b.index) {
            Some(latest) if index == latest => self.buckets.len() - 1,
            None => {
                self.buckets.reserve_exact(1);
                self.buckets.push(Bucket {
                    index,
                    ..Bucket::default()
                });
                0
            }
            Some(latest) if index > latest => {
                self.drop_buckets_through(index - windows.retained());
                // One more slot, not double: a cached profile gains a bucket a day, and a
                // vector grown by doubling would carry as many empty slots as buckets.
                self.buckets.reserve_exact(1);
                self.buckets.push(Bucket {
                    index,
                    ..Bucket::default()
                });
                self.buckets.len() - 1
            }
            Some(latest) => {
                let horizon = latest - windows.retained();
                if index <= horizon {
                    return Recorded {
                        new_episode,
                        beyond_horizon: true,
                    };
                }
                // Buckets past the horizon are only there after `state.retained_buckets`
                // shrank; they go with the next late event or the next new bucket.
                self.drop_buckets_through(horizon);
                match self.buckets.binary_search_by_key(&index, |b| b.index) {
                    Ok(at) => at,
                    Err(at) => {
                        self.buckets.reserve_exact(1);
                        self.buckets.insert(
                            at,
                            Bucket {
                                index,
                                ..Bucket::default()
                            },
                        );
                        at
                    }
                }
            }
        };
        if let Some(bucket) = self.buckets.get_mut(bucket) {
            bucket.events = bucket.events.saturating_add(1);
            bucket.session_seconds = bucket
                .session_seconds
                .saturating_add(u64::from(session_seconds));
            bucket.amount += amount;
        }
        Recorded {
            new_episode,
            beyond_horizon: false,
        }
    }

    /// Drops the buckets at or before `horizon`: the oldest, at the front.
    fn drop_buckets_through(&mut self, horizon: i64) {
        let gone = self
            .buckets
            .iter()
            .take_while(|b| b.index <= horizon)
            .count();
        self.buckets.drain(..gone);
    }

    /// Sums over the buckets with `from <= index <= to`.
    pub fn sums_between(&self, from: i64, to: i64) -> BucketSums {
        let start = self.buckets.partition_point(|b| b.index < from);
        let mut sums = BucketSums::default();
        for b in self.buckets[start..].iter().take_while(|b| b.index <= to) {
            sums.active_buckets += 1;
            sums.events += u64::from(b.events);
            sums.session_seconds += b.session_seconds;
            sums.amount += b.amount;
        }
        sums
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::WindowConfig;

    fn daily() -> Windows {
        Windows::new(&WindowConfig::default()).expect("default windows")
    }

    const DAY: i64 = crate::DAY_MS;
    const T0: i64 = 1_700_000_000_000 - 1_700_000_000_000 % DAY;

    #[test]
    fn records_episodes_and_buckets() {
        let w = daily();
        let mut p = UserProfile::default();
        assert!(p.record_activity(&w, T0 + 10, 60, 1.5).new_episode);
        assert!(p.record_activity(&w, T0 + 20, 30, 0.0).new_episode);
        let late = p.record_activity(&w, T0 + 5 - DAY, 0, 0.0);
        assert!(!late.new_episode && !late.beyond_horizon);
        assert_eq!(p.first_active_ms, T0 + 5 - DAY);
        assert_eq!(p.last_active_ms, T0 + 20);
        assert_eq!(p.buckets.len(), 2);
        let today = w.bucket_of(T0);
        assert_eq!(
            p.sums_between(today, today),
            BucketSums {
                active_buckets: 1,
                events: 2,
                session_seconds: 90,
                amount: 1.5
            }
        );
    }

    /// Cached profiles gain a bucket a day: their vectors grow by one, never by doubling.
    #[test]
    fn a_new_bucket_takes_one_slot() {
        let w = daily();
        let mut p = UserProfile::default();
        for day in 0..5 {
            p.record_activity(&w, T0 + day * DAY, 10, 0.0);
            assert_eq!(p.buckets.capacity(), p.buckets.len(), "day {day}");
        }
        assert_eq!(p.buckets.len(), 5);
    }

    #[test]
    fn keeps_only_the_retained_horizon() {
        let w = daily();
        let mut p = UserProfile::default();
        p.record_activity(&w, T0, 0, 0.0);
        p.record_activity(&w, T0 + 35 * DAY, 0, 0.0);
        // day 0 is exactly 35 days before the latest: outside a 35-bucket horizon.
        assert_eq!(p.buckets.len(), 1);
        let old = p.record_activity(&w, T0 + DAY / 2, 0, 0.0);
        assert!(old.beyond_horizon);
        assert_eq!(p.first_active_ms, T0);
        assert_eq!(p.buckets.len(), 1);
    }

    /// `record_activity` as it was before its paths for the latest and the next bucket: a
    /// search for every event, the horizon trimmed after it.
    fn record_by_search(
        p: &mut UserProfile,
        windows: &Windows,
        ts_ms: i64,
        session: u32,
        amount: f64,
    ) -> Recorded {
        let new_episode = ts_ms > p.last_active_ms;
        if !p.has_activity() || ts_ms < p.first_active_ms {
            p.first_active_ms = ts_ms;
        }
        if new_episode {
            p.last_active_ms = ts_ms;
        }
        let index = windows.bucket_of(ts_ms);
        let latest = p.latest_bucket().map_or(index, |l| l.max(index));
        let horizon = latest - windows.retained();
        if index <= horizon {
            return Recorded {
                new_episode,
                beyond_horizon: true,
            };
        }
        let at = match p.buckets.binary_search_by_key(&index, |b| b.index) {
            Ok(at) => at,
            Err(at) => {
                p.buckets.insert(
                    at,
                    Bucket {
                        index,
                        ..Bucket::default()
                    },
                );
                at
            }
        };
        let bucket = &mut p.buckets[at];
        bucket.events = bucket.events.saturating_add(1);
        bucket.session_seconds = bucket.session_seconds.saturating_add(u64::from(session));
        bucket.amount += amount;
        let keep_from = p.buckets.partition_point(|b| b.index <= horizon);
        p.buckets.drain(..keep_from);
        Recorded {
            new_episode,
            beyond_horizon: false,
        }
    }

    proptest! {
        /// Events mostly in order with some late, over widths and horizons (a horizon
        /// shrunk between events included): the same buckets, times and answers as a
        /// search for every event.
        #[test]
        fn the_latest_bucket_paths_agree_with_a_search(
            events in proptest::collection::vec((0i64..(3 * 86_400_000), 0u8..4, 0u32..600), 1..120),
            width_s in prop::sample::select(vec![60u64, 3600, 86_400]),
            retained in 35u32..60,
            shrink_at in 0usize..120,
        ) {
            let wide = Windows::new(&WindowConfig { bucket_width: Duration::from_secs(width_s), retained_buckets: retained + 10 }).expect("valid");
            let narrow = Windows::new(&WindowConfig { bucket_width: Duration::from_secs(width_s), retained_buckets: retained }).expect("valid");
            let (mut fast, mut searched) = (UserProfile::default(), UserProfile::default());
            let mut t = T0;
            for (i, (step, late, session)) in events.into_iter().enumerate() {
                // A quarter of the events come late, up to three days back.
                let ts = if late == 0 { t - step } else { t += step / 8; t };
                let w = if i < shrink_at { &wide } else { &narrow };
                let amount = f64::from(session) / 10.0;
                let a = fast.record_activity(w, ts, session, amount);
                let b = record_by_search(&mut searched, w, ts, session, amount);
                prop_assert_eq!(a, b);
                // Once the horizon shrank, buckets past it may stay until the next new
                // bucket or late event; every bucket inside it, which is all rules read, is
                // the same.
                let horizon = fast.latest_bucket().unwrap_or(0) - w.retained();
                let inside = |p: &UserProfile| -> Vec<Bucket> {
                    p.buckets.iter().filter(|b| b.index > horizon).cloned().collect()
                };
                if i < shrink_at {
                    prop_assert_eq!(&fast.buckets, &searched.buckets);
                } else {
                    prop_assert_eq!(inside(&fast), inside(&searched));
                }
                prop_assert_eq!(fast.first_active_ms, searched.first_active_ms);
                prop_assert_eq!(fast.last_active_ms, searched.last_active_ms);
            }
        }

        /// Whatever the order of events, buckets stay sorted, unique, within the horizon, and
        /// agree with a recount of the events inside it.
        #[test]
        fn buckets_match_a_recount(offsets in proptest::collection::vec(0i64..(60 * 86_400_000), 1..80),
                                   width_s in prop::sample::select(vec![1u64, 60, 3600, 86_400])) {
            let w = Windows::new(&WindowConfig { bucket_width: Duration::from_secs(width_s), retained_buckets: 35 }).expect("valid");
            let mut p = UserProfile::default();
            for o in &offsets {
                p.record_activity(&w, T0 + o, 1, 0.0);
            }
            let latest = offsets.iter().map(|o| w.bucket_of(T0 + o)).max().expect("non-empty");
            prop_assert_eq!(p.latest_bucket(), Some(latest));
            prop_assert!(p.buckets.windows(2).all(|pair| pair[0].index < pair[1].index));
            prop_assert!(p.buckets.iter().all(|b| b.index > latest - 35));
            // A recount can only be exact for buckets that were inside the horizon when their
            // events arrived; counting never exceeds the recount.
            let mut recount: BTreeMap<i64, u32> = BTreeMap::new();
            for o in &offsets {
                *recount.entry(w.bucket_of(T0 + o)).or_default() += 1;
            }
            for b in &p.buckets {
                prop_assert!(b.events <= recount[&b.index]);
            }
            prop_assert_eq!(p.last_active_ms, T0 + offsets.iter().max().copied().unwrap_or(0));
            prop_assert_eq!(p.first_active_ms, T0 + offsets.iter().min().copied().unwrap_or(0));
        }

        /// In time order, every event is inside the horizon when it arrives, so the recount
        /// is exact.
        #[test]
        fn in_order_buckets_equal_a_recount(mut offsets in proptest::collection::vec(0i64..(60 * 86_400_000), 1..80)) {
            offsets.sort_unstable();
            let w = daily();
            let mut p = UserProfile::default();
            for o in &offsets {
                p.record_activity(&w, T0 + o, 2, 0.5);
            }
            let latest = w.bucket_of(T0 + offsets[offsets.len() - 1]);
            let mut recount: BTreeMap<i64, u32> = BTreeMap::new();
            for o in &offsets {
                let b = w.bucket_of(T0 + o);
                if b > latest - 35 {
                    *recount.entry(b).or_default() += 1;
                }
            }
            let kept: BTreeMap<i64, u32> = p.buckets.iter().map(|b| (b.index, b.events)).collect();
            prop_assert_eq!(kept, recount);
        }
    }
}
