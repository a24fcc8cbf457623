//! Growth figures kept in the stream: exact daily, weekly and monthly active users and
//! new-user retention per partition, updated from one user's own record of recent active
//! days when that user's activity arrives, never by scanning users.
//!
//! An activity on day `d` (a calendar day in the reporting time zone) is counted, when it
//! arrives, in every day whose window contains `d`: the DAU of `d`, the WAU of `d..=d+6` and
//! the MAU of `d..=d+29`, except the days where another active day of the same user already
//! counts it. A user therefore leaves a window without any work when the window passes: the
//! figures of the days after it never included the user. No timer, no scan, and late
//! events (up to [`LATE_DAYS`] behind the user's latest day) land exactly where they belong.
//!
//! Retention: a user belongs to the cohort of its first active day. Cohort `c` counts its
//! users, those active again on day `c+1`, `c+7` and `c+30` (classic N-day retention) and
//! those active on that day or any later one (rolling retention).

use std::collections::{BTreeMap, VecDeque};

use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::error::invalid;
use crate::policy::time_zone;
use crate::{ExperimentCount, RulesError, DAY_MS};

/// The retention days kept per cohort, in the order of [`CohortCounts::returned`].
pub const RETENTION_DAYS: [i64; 3] = [1, 7, 30];
const WEEK: i64 = 7;
const MONTH: i64 = 30;
/// Bits in [`ActiveDays::recent`].
const RECENT_BITS: i64 = 64;
/// How far behind the user's latest active day an activity may be and still be counted:
/// the bitmap must reach a month before it to tell which windows already count the user.
pub const LATE_DAYS: i64 = RECENT_BITS - MONTH;

/// `[analytics]`: what growth figures the pipeline keeps.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GrowthConfig {
    /// Off: no figures are kept and profiles carry no active-day record.
    pub enabled: bool,
    /// IANA zone whose calendar days the figures count.
    pub timezone: String,
    /// Days of active-user figures kept per partition, ending with the clock's day.
    pub history_days: u32,
    /// Cohorts kept per partition, ending with the clock's day.
    pub cohort_days: u32,
}

impl Default for GrowthConfig {
    fn default() -> Self {
        GrowthConfig {
            enabled: true,
            timezone: "UTC".into(),
            history_days: 120,
            cohort_days: 120,
        }
    }
}

/// One user's active days: the first, the latest, and a bitmap of the 64 days ending with
/// the latest (bit `i`: active on `last_day - i`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveDays {
    pub first_day: i32,
    pub last_day: i32,
    pub recent: u64,
}

impl ActiveDays {
    fn new(day: i64) -> ActiveDays {
        ActiveDays {
            first_day: day as i32,
            last_day: day as i32,
            recent: 1,
        }
    }

    fn last(&self) -> i64 {
        i64::from(self.last_day)
    }

    fn first(&self) -> i64 {
        i64::from(self.first_day)
    }

    /// Whether the user was active on `day`, as far as the bitmap reaches.
    pub fn was_active(&self, day: i64) -> bool {
        let back = self.last() - day;
        (0..RECENT_BITS).contains(&back) && (self.recent >> back) & 1 == 1
    }

    /// The latest active day before `day` that the bitmap holds.
    fn previous(&self, day: i64) -> Option<i64> {
        let back = self.last() - day;
        if back < 0 {
            return Some(self.last());
        }
        if back >= RECENT_BITS - 1 {
            return None;
        }
        let earlier = self.recent & (u64::MAX << (back + 1));
        (earlier != 0).then(|| self.last() - i64::from(earlier.trailing_zeros()))
    }

    /// The earliest active day after `day`.
    fn next(&self, day: i64) -> Option<i64> {
        let back = self.last() - day;
        if back <= 0 {
            return None;
        }
        let later = if back >= RECENT_BITS {
            self.recent
        } else {
            self.recent & ((1u64 << back) - 1)
        };
        (later != 0).then(|| self.last() - i64::from(63 - later.leading_zeros()))
    }

    fn mark(&mut self, day: i64) {
        let back = self.last() - day;
        if back < 0 {
            let shift = -back;
            self.recent = if shift >= RECENT_BITS {
                0
            } else {
                self.recent << shift
            };
            self.recent |= 1;
            self.last_day = day as i32;
        } else if back < RECENT_BITS {
            self.recent |= 1 << back;
        }
    }
}

/// Distinct users active on a day, in the week and in the 30 days ending with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayCounts {
    pub dau: u32,
    pub wau: u32,
    pub mau: u32,
}

/// One cohort: users whose first active day it is, and how many came back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CohortCounts {
    pub users: u32,
    /// Active on exactly day 1, 7 and 30 after the cohort day ([`RETENTION_DAYS`]).
    pub returned: [u32; 3],
    /// Active on that day or any later one.
    pub rolling: [u32; 3],
}

impl CohortCounts {
    pub fn add(&mut self, other: &CohortCounts) {
        self.users = self.users.saturating_add(other.users);
        for i in 0..RETENTION_DAYS.len() {
            self.returned[i] = self.returned[i].saturating_add(other.returned[i]);
            self.rolling[i] = self.rolling[i].saturating_add(other.rolling[i]);
        }
    }
}

/// Values by day number, over a contiguous range that grows at either end.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Series<T> {
    from: i64,
    items: VecDeque<T>,
}

impl<T: Default + Clone> Series<T> {
    fn get(&self, day: i64) -> Option<&T> {
        usize::try_from(day - self.from)
            .ok()
            .and_then(|i| self.items.get(i))
    }

    /// The value of `day`, created (with every day between) if `day` is in `floor..=ceiling`.
    fn get_mut(&mut self, day: i64, floor: i64, ceiling: i64) -> Option<&mut T> {
        if day < floor || day > ceiling {
            return None;
        }
        if self.items.is_empty() {
            self.from = day;
        }
        while day < self.from {
            self.items.push_front(T::default());
            self.from -= 1;
        }
        let index = usize::try_from(day - self.from).ok()?;
        if index >= self.items.len() {
            self.items.resize(index + 1, T::default());
        }
        self.items.get_mut(index)
    }

    /// Drops days before `floor`; true if any were dropped.
    fn trim(&mut self, floor: i64) -> bool {
        let mut trimmed = false;
        while self.from < floor && !self.items.is_empty() {
            self.items.pop_front();
            self.from += 1;
            trimmed = true;
        }
        trimmed
    }

    fn days(&self) -> impl Iterator<Item = (i64, &T)> + '_ {
        (self.from..).zip(self.items.iter())
    }
}

/// One partition's growth figures. A user belongs to exactly one partition, so the figures
/// of all partitions add up to the figures of all users.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GrowthFigures {
    /// The reporting zone the day numbers are in; empty until the first activity.
    pub timezone: String,
    days: Series<DayCounts>,
    cohorts: Series<CohortCounts>,
    /// Users per (rule, experiment, arm): triggered (or held out), and reactivated.
    experiments: BTreeMap<(String, String, String), ArmCounts>,
}

/// One arm of a rule's experiment: distinct users triggered (or held out) in it, and how
/// many of them came back within the attribution window after such a trigger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArmCounts {
    pub users: u64,
    pub reactivated: u64,
}

impl ArmCounts {
    pub fn add(&mut self, other: &ArmCounts) {
        self.users = self.users.saturating_add(other.users);
        self.reactivated = self.reactivated.saturating_add(other.reactivated);
    }
}

impl GrowthFigures {
    pub fn day(&self, day: i64) -> DayCounts {
        self.days.get(day).copied().unwrap_or_default()
    }

    pub fn cohort(&self, day: i64) -> CohortCounts {
        self.cohorts.get(day).copied().unwrap_or_default()
    }

    /// Days with figures, in order (days after the clock's hold what is already known to
    /// count in their windows).
    pub fn days(&self) -> impl Iterator<Item = (i64, DayCounts)> + '_ {
        self.days.days().map(|(d, c)| (d, *c))
    }

    pub fn cohorts(&self) -> impl Iterator<Item = (i64, CohortCounts)> + '_ {
        self.cohorts.days().map(|(d, c)| (d, *c))
    }

    /// Counts a user in an arm of a rule's experiment.
    pub fn count_experiment(&mut self, count: &ExperimentCount) {
        let key = (
            count.rule.clone(),
            count.experiment.clone(),
            count.arm.clone(),
        );
        let counts = self.experiments.entry(key).or_default();
        if count.reactivated {
            counts.reactivated = counts.reactivated.saturating_add(1);
        } else {
            counts.users = counts.users.saturating_add(1);
        }
    }

    /// Every arm anyone was counted in: (rule, experiment, arm) and its counts.
    pub fn experiments(&self) -> impl Iterator<Item = (&(String, String, String), &ArmCounts)> {
        self.experiments.iter()
    }

    /// One arm's counts (zero when nobody was counted in it).
    pub fn arm(&self, rule: &str, experiment: &str, arm: &str) -> ArmCounts {
        self.experiments
            .get(&(rule.to_string(), experiment.to_string(), arm.to_string()))
            .copied()
            .unwrap_or_default()
    }
}

/// What became of one activity in the growth figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// The user's first activity: a new member of its day's cohort.
    NewUser,
    /// The user's first activity of that day.
    NewDay,
    /// The user was already active that day.
    SameDay,
    /// More than [`LATE_DAYS`] behind the user's latest day: not counted.
    TooLate,
    /// Dated after the clock's next day, or not a representable time: not counted.
    Ahead,
}

impl Counted {
    /// The reason label of an activity that was not counted.
    pub fn uncounted_reason(&self) -> Option<&'static str> {
        match self {
            Counted::TooLate => Some("too_late"),
            Counted::Ahead => Some("ahead"),
            _ => None,
        }
    }
}

/// The validated `[analytics]` configuration and the arithmetic of the figures.
#[derive(Debug, Clone)]
pub struct Growth {
    /// `None`: UTC, where a day is plain division.
    zone: Option<TimeZone>,
    zone_name: String,
    history_days: i64,
    cohort_days: i64,
}

impl Growth {
    /// `None` when analytics are off.
    pub fn new(config: &GrowthConfig) -> Result<Option<Growth>, RulesError> {
        if !config.enabled {
            return Ok(None);
        }
        let zone = time_zone(&config.timezone).ok_or_else(|| {
            invalid(
                "analytics.timezone",
                format!("{:?} is not an IANA time zone", config.timezone),
            )
        })?;
        for (key, value) in [
            ("analytics.history_days", config.history_days),
            ("analytics.cohort_days", config.cohort_days),
        ] {
            if !(31..=3660).contains(&value) {
                return Err(invalid(key, "must be between 31 and 3660"));
            }
        }
        let utc = matches!(config.timezone.as_str(), "UTC" | "Etc/UTC");
        Ok(Some(Growth {
            zone: (!utc).then_some(zone),
            zone_name: config.timezone.clone(),
            history_days: i64::from(config.history_days),
            cohort_days: i64::from(config.cohort_days),
        }))
    }

    pub fn timezone(&self) -> &str {
        &self.zone_name
    }

    /// The calendar day (days since 1970-01-01 in the reporting zone) holding `ts_ms`.
    pub fn day_of(&self, ts_ms: i64) -> Option<i64> {
        match &self.zone {
            None => Some(ts_ms.div_euclid(DAY_MS)),
            Some(zone) => {
                let at = Timestamp::from_millisecond(ts_ms).ok()?;
                let offset_ms = i64::from(zone.to_offset(at).seconds()) * 1000;
                Some(ts_ms.saturating_add(offset_ms).div_euclid(DAY_MS))
            }
        }
    }

    /// The last day whose figures are final at the clock: the day before the clock's.
    pub fn last_complete_day(&self, clock_ms: i64) -> Option<i64> {
        self.day_of(clock_ms).map(|d| d - 1)
    }

    /// Counts one activity of a user at event time `ts_ms`, with the pipeline clock at
    /// `clock_ms`. `user` is the user's record (`None` before its first activity).
    pub fn record(
        &self,
        user: &mut Option<ActiveDays>,
        ts_ms: i64,
        clock_ms: i64,
        figures: &mut GrowthFigures,
    ) -> Counted {
        let (Some(day), Some(today)) = (self.day_of(ts_ms), self.day_of(clock_ms)) else {
            return Counted::Ahead;
        };
        if day > today + 1 || day < i64::from(i32::MIN) || day > i64::from(i32::MAX) {
            return Counted::Ahead;
        }
        if figures.timezone.is_empty() {
            figures.timezone = self.zone_name.clone();
        }
        let mut table = Table {
            figures,
            day_floor: today - self.history_days + 1,
            cohort_floor: today - self.cohort_days + 1,
            ceiling: today + 1 + MONTH,
        };
        let Some(days) = user else {
            let days = ActiveDays::new(day);
            table.add_active(day, None, None);
            table.add_member(&days, 1);
            *user = Some(days);
            return Counted::NewUser;
        };
        if day < days.last() - LATE_DAYS {
            return Counted::TooLate;
        }
        if days.was_active(day) {
            return Counted::SameDay;
        }
        table.add_active(day, days.previous(day), days.next(day));
        if day < days.first() {
            // An activity before the user's first: the user moves to an earlier cohort. Its
            // whole history is in the bitmap (it spans less than LATE_DAYS), so the old
            // cohort's counts can be taken back exactly.
            table.add_member(days, -1);
            days.mark(day);
            days.first_day = day as i32;
            table.add_member(days, 1);
            return Counted::NewDay;
        }
        let cohort = days.first();
        let previous_last = days.last();
        days.mark(day);
        if let Some(counts) = table.cohort(cohort) {
            for (i, k) in RETENTION_DAYS.iter().enumerate() {
                if day == cohort + k {
                    counts.returned[i] = counts.returned[i].saturating_add(1);
                }
                if previous_last < cohort + k && cohort + k <= day {
                    counts.rolling[i] = counts.rolling[i].saturating_add(1);
                }
            }
        }
        Counted::NewDay
    }

    /// Whether [`Growth::settle`] would drop anything at this clock.
    pub fn needs_settling(&self, figures: &GrowthFigures, clock_ms: i64) -> bool {
        let Some(today) = self.day_of(clock_ms) else {
            return false;
        };
        (!figures.days.items.is_empty() && figures.days.from < today - self.history_days + 1)
            || (!figures.cohorts.items.is_empty()
                && figures.cohorts.from < today - self.cohort_days + 1)
    }

    /// Drops days and cohorts that fell out of the kept history at this clock.
    pub fn settle(&self, figures: &mut GrowthFigures, clock_ms: i64) -> bool {
        let Some(today) = self.day_of(clock_ms) else {
            return false;
        };
        let days = figures.days.trim(today - self.history_days + 1);
        let cohorts = figures.cohorts.trim(today - self.cohort_days + 1);
        days || cohorts
    }
}

/// The figures with the bounds of the current clock.
struct Table<'a> {
    figures: &'a mut GrowthFigures,
    day_floor: i64,
    cohort_floor: i64,
    ceiling: i64,
}

impl Table<'_> {
    /// A new active day between the user's active days `previous` and `next` (as far as
    /// they matter: within a month).
    fn add_active(&mut self, day: i64, previous: Option<i64>, next: Option<i64>) {
        let (floor, ceiling) = (self.day_floor, self.ceiling);
        let days = &mut self.figures.days;
        if let Some(c) = days.get_mut(day, floor, ceiling) {
            c.dau = c.dau.saturating_add(1);
        }
        for (width, field) in [(WEEK, 0), (MONTH, 1)] {
            // Day D's window is D-width+1..=D: it gains the user unless it already holds
            // `previous` (D < previous + width) or `next` (D >= next).
            let from = previous.map_or(day, |p| day.max(p + width));
            let to = next.map_or(day + width - 1, |n| (day + width - 1).min(n - 1));
            for d in from..=to {
                if let Some(c) = days.get_mut(d, floor, ceiling) {
                    let slot = if field == 0 { &mut c.wau } else { &mut c.mau };
                    *slot = slot.saturating_add(1);
                }
            }
        }
    }

    fn cohort(&mut self, day: i64) -> Option<&mut CohortCounts> {
        self.figures
            .cohorts
            .get_mut(day, self.cohort_floor, self.ceiling)
    }

    /// Adds (`sign` 1) or takes back (-1) a user as a member of its first day's cohort.
    fn add_member(&mut self, days: &ActiveDays, sign: i32) {
        let cohort = days.first();
        let Some(counts) = self.cohort(cohort) else {
            return;
        };
        let step = |n: u32, yes: bool| match (yes, sign > 0) {
            (false, _) => n,
            (true, true) => n.saturating_add(1),
            (true, false) => n.saturating_sub(1),
        };
        counts.users = step(counts.users, true);
        for (i, k) in RETENTION_DAYS.iter().enumerate() {
            counts.returned[i] = step(counts.returned[i], days.was_active(cohort + k));
            counts.rolling[i] = step(counts.rolling[i], days.last() >= cohort + k);
        }
    }
}

/// `YYYY-MM-DD` of a day number.
pub fn day_label(day: i64) -> String {
    let epoch = jiff::civil::date(1970, 1, 1);
    match epoch.checked_add(jiff::Span::new().days(day)) {
        Ok(date) => date.to_string(),
        Err(_) => format!("day {day}"),
    }
}

#[cfg(test)]
mod tests;
