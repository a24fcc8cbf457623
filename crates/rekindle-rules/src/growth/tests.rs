use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

fn growth(zone: &str) -> Growth {
    Growth::new(&GrowthConfig {
        enabled: true,
        timezone: zone.into(),
        history_days: 400,
        cohort_days: 400,
    })
    .expect("valid config")
    .expect("enabled")
}

/// The figures recounted from the counted (user, day) pairs, the slow and obvious way.
fn recount(
    active: &BTreeSet<(u32, i64)>,
    days: std::ops::RangeInclusive<i64>,
) -> (Vec<DayCounts>, BTreeMap<i64, CohortCounts>) {
    let mut by_user: BTreeMap<u32, BTreeSet<i64>> = BTreeMap::new();
    for (user, day) in active {
        by_user.entry(*user).or_default().insert(*day);
    }
    let in_window = |set: &BTreeSet<i64>, from: i64, to: i64| set.range(from..=to).next().is_some();
    let series = days
        .map(|d| DayCounts {
            dau: by_user.values().filter(|s| s.contains(&d)).count() as u32,
            wau: by_user.values().filter(|s| in_window(s, d - 6, d)).count() as u32,
            mau: by_user.values().filter(|s| in_window(s, d - 29, d)).count() as u32,
        })
        .collect();
    let mut cohorts: BTreeMap<i64, CohortCounts> = BTreeMap::new();
    for set in by_user.values() {
        let (Some(&first), Some(&last)) = (set.first(), set.last()) else {
            continue;
        };
        let c = cohorts.entry(first).or_default();
        c.users += 1;
        for (i, k) in RETENTION_DAYS.iter().enumerate() {
            c.returned[i] += u32::from(set.contains(&(first + k)));
            c.rolling[i] += u32::from(last >= first + k);
        }
    }
    (series, cohorts)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// Whatever the order of arrival (late events included), the incremental figures equal
    /// a recount of the activities they counted.
    #[test]
    fn incremental_figures_equal_a_recount(
        steps in prop::collection::vec((0u32..12, 0i64..120, 0i64..DAY_MS, 0i64..3), 1..300),
    ) {
        let g = growth("UTC");
        let mut figures = GrowthFigures::default();
        let mut users: BTreeMap<u32, Option<ActiveDays>> = BTreeMap::new();
        let mut counted = BTreeSet::new();
        let mut clock = 0i64;
        for (user, day, within, lag) in steps {
            // Mostly in time order, sometimes up to two months late.
            let ts = day * DAY_MS + within;
            let ts = if lag == 0 { ts - 60 * DAY_MS } else { ts };
            clock = clock.max(ts);
            let record = users.entry(user).or_default();
            let result = g.record(record, ts, clock, &mut figures);
            match result {
                Counted::NewUser | Counted::NewDay => {
                    prop_assert!(counted.insert((user, ts.div_euclid(DAY_MS))));
                }
                Counted::SameDay => prop_assert!(counted.contains(&(user, ts.div_euclid(DAY_MS)))),
                Counted::TooLate => {
                    let last = users[&user].map(|d| i64::from(d.last_day)).unwrap_or(0);
                    prop_assert!(ts.div_euclid(DAY_MS) < last - LATE_DAYS);
                }
                Counted::Ahead => prop_assert!(false, "in-order clock never runs behind"),
            }
        }
        let (series, cohorts) = recount(&counted, -70..=160);
        for (d, expected) in (-70..=160).zip(series) {
            prop_assert_eq!(figures.day(d), expected, "day {}", d);
        }
        for (c, expected) in &cohorts {
            prop_assert_eq!(figures.cohort(*c), *expected, "cohort {}", c);
        }
        let listed: u32 = figures.cohorts().map(|(_, c)| c.users).sum();
        prop_assert_eq!(listed as usize, users.values().filter(|u| u.is_some()).count());
    }

    #[test]
    fn the_bitmap_answers_like_a_set(days in prop::collection::btree_set(0i64..200, 1..40)) {
        let mut record = ActiveDays::new(*days.first().expect("non-empty"));
        for d in &days {
            record.mark(*d);
        }
        let last = *days.last().expect("non-empty");
        for probe in last - 70..=last + 3 {
            let kept = |d: &&i64| last - **d < 64;
            prop_assert_eq!(record.was_active(probe), days.contains(&probe) && last - probe < 64);
            let previous = days.range(..probe).next_back().filter(kept).copied();
            prop_assert_eq!(record.previous(probe), previous, "previous of {}", probe);
            let next = days.range(probe + 1..).find(kept).copied();
            prop_assert_eq!(record.next(probe), next, "next of {}", probe);
        }
    }
}

#[test]
fn days_follow_the_reporting_zone() {
    let tokyo = growth("Asia/Tokyo");
    // 2026-03-01T16:00Z is already 2 March in Tokyo (UTC+9).
    let ts = 1_772_380_800_000;
    let utc_day = ts / DAY_MS;
    assert_eq!(day_label(utc_day), "2026-03-01");
    assert_eq!(tokyo.day_of(ts), Some(utc_day + 1));
    assert_eq!(growth("UTC").day_of(ts), Some(utc_day));
    // New York: 2026-03-01T03:00Z is still 28 February there.
    let new_york = growth("America/New_York");
    assert_eq!(
        new_york.day_of(utc_day * DAY_MS + 3 * 3_600_000),
        Some(utc_day - 1)
    );
}

#[test]
fn old_days_and_cohorts_are_dropped_as_the_clock_moves() {
    let g = Growth::new(&GrowthConfig {
        history_days: 40,
        cohort_days: 35,
        ..GrowthConfig::default()
    })
    .expect("valid")
    .expect("enabled");
    let mut figures = GrowthFigures::default();
    let mut user = None;
    g.record(&mut user, 0, 0, &mut figures);
    assert_eq!(figures.day(29).mau, 1);
    assert_eq!(figures.cohort(0).users, 1);
    let clock = 50 * DAY_MS;
    assert!(g.needs_settling(&figures, clock));
    assert!(g.settle(&mut figures, clock));
    assert!(!g.needs_settling(&figures, clock));
    assert_eq!(figures.cohort(0), CohortCounts::default());
    assert_eq!(
        figures.day(10),
        DayCounts::default(),
        "before the 40 days ending on day 50"
    );
    assert_eq!(
        figures.day(11).mau,
        1,
        "the first of the 40 days ending on day 50"
    );
    // Activity dated after tomorrow is not counted and does not disturb the user's record.
    let before = user;
    assert_eq!(
        g.record(&mut user, 90 * DAY_MS, clock, &mut figures),
        Counted::Ahead
    );
    assert_eq!(user, before);
}

#[test]
fn configuration_is_checked() {
    let bad_zone = GrowthConfig {
        timezone: "Mars/Olympus".into(),
        ..GrowthConfig::default()
    };
    assert!(Growth::new(&bad_zone).is_err());
    let short = GrowthConfig {
        cohort_days: 10,
        ..GrowthConfig::default()
    };
    assert!(Growth::new(&short).is_err());
    let off = GrowthConfig {
        enabled: false,
        ..GrowthConfig::default()
    };
    assert!(Growth::new(&off).expect("valid").is_none());
}
