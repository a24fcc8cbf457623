//! RFM segments: recency (time since the last activity), frequency (active buckets in
//! the lookback) and monetary value (sum of `amount` in the lookback), each scored 1 to 5
//! with configured thresholds, and a table from scores to named segments (first match wins).
//!
//! A user's segment is a function of its profile and the clock. It changes with new
//! activity and, without any, when a recency threshold passes or an active bucket leaves the
//! lookback; `Segments::changes` finds the moments at which the *segment* (not merely a
//! score) changes, which the rule book plans as counted steps of the user's timer, so the
//! per-partition counts stay exact without scanning users or reading their profiles.

use std::time::Duration;

use serde::Deserialize;
use smallvec::SmallVec;

use crate::error::invalid;
use crate::{RulesError, UserProfile, Windows};

/// At most this many segments, so that counts fit a fixed array in the partition's meta.
pub const MAX_SEGMENTS: usize = 16;

/// Segment changes found by one sweep, kept on the stack up to this many.
pub(crate) type SegmentChanges = SmallVec<[(i64, u8); 10]>;

/// One line of the segment table: a name and the score ranges it covers, e.g. `r = "4-5"`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SegmentRuleConfig {
    pub name: String,
    pub r: String,
    pub f: String,
    #[serde(default = "all_scores")]
    pub m: String,
}

fn all_scores() -> String {
    "1-5".into()
}

/// `[segments]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SegmentConfig {
    pub enabled: bool,
    /// The window of frequency and monetary value, ending with the clock's bucket.
    #[serde(with = "humantime_serde")]
    pub lookback: Duration,
    /// Recency score 5, 4, 3, 2 while the time since the last activity is less than these;
    /// 1 beyond the last.
    pub recency: [humantime_serde::Serde<Duration>; 4],
    /// Frequency score 2, 3, 4, 5: at least this many active buckets in the lookback.
    pub frequency: [u32; 4],
    /// Monetary score 2, 3, 4, 5: at least this sum of `amount` in the lookback.
    pub monetary: [f64; 4],
    /// Scores to segment names, first match wins; every combination must be covered.
    pub map: Vec<SegmentRuleConfig>,
}

impl Default for SegmentConfig {
    fn default() -> Self {
        let line = |name: &str, r: &str, f: &str, m: &str| SegmentRuleConfig {
            name: name.into(),
            r: r.into(),
            f: f.into(),
            m: m.into(),
        };
        SegmentConfig {
            enabled: true,
            lookback: Duration::from_secs(30 * 86_400),
            recency: [2, 4, 8, 15].map(|days| Duration::from_secs(days * 86_400).into()),
            frequency: [2, 4, 8, 15],
            monetary: [1.0, 20.0, 100.0, 500.0],
            map: vec![
                line("champions", "4-5", "4-5", "1-5"),
                line("loyal", "3-5", "3-5", "1-5"),
                line("new", "4-5", "1", "1-5"),
                line("potential", "3-5", "1-2", "1-5"),
                line("cant_lose", "1-2", "4-5", "4-5"),
                line("at_risk", "1-2", "3-5", "1-5"),
                line("hibernating", "2", "1-2", "1-5"),
                line("lost", "1", "1-2", "1-5"),
            ],
        }
    }
}

/// Recency, frequency and monetary scores, each 1 to 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scores {
    pub r: u8,
    pub f: u8,
    pub m: u8,
}

/// The validated segment configuration.
#[derive(Debug, Clone)]
pub struct Segments {
    windows: Windows,
    lookback: i64,
    /// Milliseconds of silence at which the recency score drops from 5, 4, 3 and 2.
    recency_ms: [i64; 4],
    frequency: [u32; 4],
    monetary: [f64; 4],
    names: Vec<String>,
    /// Segment index by `(r-1)*25 + (f-1)*5 + (m-1)`.
    table: [u8; 125],
    /// Changes whenever anything that decides a user's segment changes.
    hash: u64,
}

fn ascending<T: PartialOrd + Copy>(key: &str, values: &[T]) -> Result<(), RulesError> {
    if values.windows(2).all(|w| w[0] < w[1]) {
        Ok(())
    } else {
        Err(invalid(key, "thresholds must be strictly ascending"))
    }
}

/// `"4-5"` or `"3"` as an inclusive range of scores.
fn score_range(key: &str, text: &str) -> Result<(u8, u8), RulesError> {
    let parse = |s: &str| s.trim().parse::<u8>().ok().filter(|v| (1..=5).contains(v));
    let (low, high) = match text.split_once('-') {
        Some((a, b)) => (parse(a), parse(b)),
        None => (parse(text), parse(text)),
    };
    match (low, high) {
        (Some(l), Some(h)) if l <= h => Ok((l, h)),
        _ => Err(invalid(
            key,
            format!("{text:?} is not a score range like \"4-5\" or \"3\""),
        )),
    }
}

impl Segments {
    /// `None` when segments are off.
    pub fn new(config: &SegmentConfig, windows: Windows) -> Result<Option<Segments>, RulesError> {
        if !config.enabled {
            return Ok(None);
        }
        let lookback = windows.buckets_in("segments.lookback", config.lookback)?;
        if lookback > windows.retained() {
            return Err(invalid(
                "segments.lookback",
                "must not exceed state.retained_buckets buckets",
            ));
        }
        let recency_ms = config
            .recency
            .map(|d| i64::try_from(d.into_inner().as_millis()).unwrap_or(i64::MAX));
        if recency_ms[0] <= 0 {
            return Err(invalid("segments.recency", "durations must be positive"));
        }
        ascending("segments.recency", &recency_ms)?;
        ascending("segments.frequency", &config.frequency)?;
        ascending("segments.monetary", &config.monetary)?;
        if config.monetary.iter().any(|m| !m.is_finite()) {
            return Err(invalid("segments.monetary", "must be finite numbers"));
        }
        if config.map.is_empty() || config.map.len() > MAX_SEGMENTS {
            return Err(invalid(
                "segments.map",
                format!("must name 1 to {MAX_SEGMENTS} segments"),
            ));
        }
        let mut names: Vec<String> = Vec::new();
        let mut table = [u8::MAX; 125];
        for (i, line) in config.map.iter().enumerate() {
            let key = format!("segments.map[{i}]");
            let valid_name = !line.name.is_empty()
                && line
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !valid_name {
                return Err(invalid(
                    format!("{key}.name"),
                    "must be lowercase letters, digits and _",
                ));
            }
            let index = match names.iter().position(|n| *n == line.name) {
                Some(at) => at,
                None => {
                    names.push(line.name.clone());
                    names.len() - 1
                }
            };
            let (r0, r1) = score_range(&format!("{key}.r"), &line.r)?;
            let (f0, f1) = score_range(&format!("{key}.f"), &line.f)?;
            let (m0, m1) = score_range(&format!("{key}.m"), &line.m)?;
            for r in r0..=r1 {
                for f in f0..=f1 {
                    for m in m0..=m1 {
                        let slot = &mut table[cell(Scores { r, f, m })];
                        if *slot == u8::MAX {
                            *slot = index as u8;
                        }
                    }
                }
            }
        }
        if let Some(at) = table.iter().position(|s| *s == u8::MAX) {
            let (r, f, m) = (at / 25 + 1, at / 5 % 5 + 1, at % 5 + 1);
            return Err(invalid(
                "segments.map",
                format!("no segment covers r={r} f={f} m={m}"),
            ));
        }
        let hash = xxhash_rust::xxh3::xxh3_64(
            format!(
                "{lookback} {recency_ms:?} {:?} {:?} {names:?} {table:?} {}",
                config.frequency,
                config.monetary,
                windows.width_ms()
            )
            .as_bytes(),
        );
        Ok(Some(Segments {
            windows,
            lookback,
            recency_ms,
            frequency: config.frequency,
            monetary: config.monetary,
            names,
            table,
            hash,
        }))
    }

    /// Segment names, in index order (the order of first appearance in the map).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn name(&self, index: u8) -> Option<&str> {
        self.names.get(usize::from(index)).map(String::as_str)
    }

    pub fn index_of(&self, name: &str) -> Option<u8> {
        self.names.iter().position(|n| n == name).map(|i| i as u8)
    }

    /// Identifies the configuration: a stored segment means what it says only under the
    /// same hash.
    pub fn config_hash(&self) -> u64 {
        self.hash
    }

    fn recency_score(&self, silent_ms: i64) -> u8 {
        5 - self
            .recency_ms
            .iter()
            .take_while(|t| silent_ms >= **t)
            .count() as u8
    }

    fn frequency_score(&self, active: u32) -> u8 {
        1 + self.frequency.iter().filter(|t| active >= **t).count() as u8
    }

    fn monetary_score(&self, amount: f64) -> u8 {
        1 + self.monetary.iter().filter(|t| amount >= **t).count() as u8
    }

    /// Active buckets and amount in the lookback at `now_ms`, and the index of the first
    /// bucket in it.
    fn window(&self, profile: &UserProfile, now_ms: i64) -> (u32, f64, usize) {
        let first_in = self.windows.bucket_of(now_ms) - self.lookback + 1;
        let from = profile.buckets.partition_point(|b| b.index < first_in);
        let inside = &profile.buckets[from..];
        (inside.len() as u32, amount_of(inside), from)
    }

    /// The scores at `now_ms`; `None` before the first activity.
    pub fn scores(&self, profile: &UserProfile, now_ms: i64) -> Option<Scores> {
        if !profile.has_activity() {
            return None;
        }
        let silent = (now_ms - profile.last_active_ms).max(0);
        let (active, amount, _) = self.window(profile, now_ms);
        Some(Scores {
            r: self.recency_score(silent),
            f: self.frequency_score(active),
            m: self.monetary_score(amount),
        })
    }

    /// The segment at `now_ms`; `None` before the first activity.
    pub fn segment_at(&self, profile: &UserProfile, now_ms: i64) -> Option<u8> {
        self.scores(profile, now_ms).map(|s| self.table[cell(s)])
    }

    /// The first moment after `now_ms` at which the segment differs from the one at
    /// `now_ms`, if no activity comes in between: what the sweep is checked against.
    #[cfg(test)]
    pub fn next_change(&self, profile: &UserProfile, now_ms: i64) -> Option<i64> {
        let current = self.segment_at(profile, now_ms)?;
        let mut out = SegmentChanges::new();
        self.sweep(profile, now_ms, Some(current), i64::MAX, 1, &mut out);
        out.first().map(|(at, _)| *at)
    }

    /// The segment changes after `now_ms` and before `until` without new activity,
    /// starting from the stored segment: each moment with the segment from then on,
    /// ascending, at most `limit` of them.
    pub(crate) fn changes(
        &self,
        profile: &UserProfile,
        now_ms: i64,
        until: i64,
        limit: usize,
        out: &mut SegmentChanges,
    ) {
        if profile.has_activity() {
            self.sweep(profile, now_ms, profile.segment, until, limit, out);
        }
    }

    fn sweep(
        &self,
        profile: &UserProfile,
        now_ms: i64,
        start: Option<u8>,
        until: i64,
        limit: usize,
        out: &mut SegmentChanges,
    ) {
        if limit == 0 {
            return;
        }
        let (_, _, from) = self.window(profile, now_ms);
        let width = self.windows.width_ms();
        // Moments a score can move: a bucket leaves the lookback, a recency threshold passes.
        let mut moments: SmallVec<[(i64, Option<usize>); 40]> = profile.buckets[from..]
            .iter()
            .enumerate()
            .map(|(i, b)| ((b.index + self.lookback) * width, Some(from + i)))
            .collect();
        for silent in self.recency_ms {
            moments.push((profile.last_active_ms.saturating_add(silent), None));
        }
        moments.retain(|(t, _)| *t > now_ms && *t < until);
        moments.sort_unstable_by_key(|(t, _)| *t);
        // Buckets leave oldest first, so what is left is always a suffix of the buckets: the
        // amount of each suffix, summed as `amount_of` sums it (from the latest bucket on).
        let mut suffix_amounts: SmallVec<[f64; 40]> = SmallVec::new();
        suffix_amounts.resize(profile.buckets.len() - from + 1, 0.0);
        let mut sum = 0.0;
        for (i, b) in profile.buckets[from..].iter().enumerate().rev() {
            sum += b.amount;
            suffix_amounts[i] = sum;
        }
        let mut left_from = from;
        let mut current = start;
        let mut found = 0;
        let mut at = 0;
        while at < moments.len() {
            let time = moments[at].0;
            // Everything that happens at the same moment, together.
            while at < moments.len() && moments[at].0 == time {
                if let Some(bucket) = moments[at].1 {
                    left_from = left_from.max(bucket + 1);
                }
                at += 1;
            }
            let inside = profile.buckets.len().saturating_sub(left_from);
            let silent = (time - profile.last_active_ms).max(0);
            let amount = suffix_amounts
                .get(left_from - from)
                .copied()
                .unwrap_or_default();
            let scores = Scores {
                r: self.recency_score(silent),
                f: self.frequency_score(inside as u32),
                m: self.monetary_score(amount),
            };
            let segment = self.table[cell(scores)];
            if Some(segment) != current {
                out.push((time, segment));
                found += 1;
                if found >= limit {
                    return;
                }
                current = Some(segment);
            }
        }
    }
}

/// Summed in one fixed order, so that the same buckets always give the same sum: a
/// threshold is then crossed at the same moment however the sum was reached.
fn amount_of(buckets: &[crate::Bucket]) -> f64 {
    buckets.iter().rev().map(|b| b.amount).sum()
}

fn cell(s: Scores) -> usize {
    usize::from(s.r - 1) * 25 + usize::from(s.f - 1) * 5 + usize::from(s.m - 1)
}

#[cfg(test)]
mod tests;
