use proptest::prelude::*;

use super::*;
use crate::{Bucket, WindowConfig, DAY_MS};

fn segments() -> Segments {
    let windows = Windows::new(&WindowConfig::default()).expect("windows");
    Segments::new(&SegmentConfig::default(), windows)
        .expect("the default segments are valid")
        .expect("enabled")
}

fn profile(days: &[(i64, f64)], last_active_ms: i64) -> UserProfile {
    UserProfile {
        first_active_ms: days.first().map_or(last_active_ms, |d| d.0 * DAY_MS),
        last_active_ms,
        buckets: days
            .iter()
            .map(|(index, amount)| Bucket {
                index: *index,
                events: 1,
                session_seconds: 0,
                amount: *amount,
            })
            .collect(),
        ..UserProfile::default()
    }
}

#[test]
fn scores_follow_the_thresholds() {
    let s = segments();
    // Active on 10 of the last 30 days, 25.0 spent, last seen half a day ago.
    let days: Vec<(i64, f64)> = (90..100).map(|d| (d, 2.5)).collect();
    let now = 100 * DAY_MS + DAY_MS / 2;
    let p = profile(&days, 99 * DAY_MS + 20 * 3_600_000);
    assert_eq!(s.scores(&p, now), Some(Scores { r: 5, f: 4, m: 3 }));
    assert_eq!(
        s.name(s.segment_at(&p, now).expect("segment")),
        Some("champions")
    );
    // Three weeks later: recency 21 days (score 1); days 92-99 are still in the lookback:
    // 8 active days (F 4) and 20.0 spent (M 3). Not enough spent for cant_lose.
    let later = now + 21 * DAY_MS;
    assert_eq!(s.scores(&p, later), Some(Scores { r: 1, f: 4, m: 3 }));
    assert_eq!(
        s.name(s.segment_at(&p, later).expect("segment")),
        Some("at_risk")
    );
    assert_eq!(s.segment_at(&UserProfile::default(), now), None);
}

#[test]
fn the_map_must_cover_every_score_combination() {
    let windows = Windows::new(&WindowConfig::default()).expect("windows");
    let mut config = SegmentConfig::default();
    config.map.retain(|l| l.name != "lost");
    let error = Segments::new(&config, windows).expect_err("r=1 f=1 is uncovered");
    assert!(error.to_string().contains("r=1 f=1 m=1"), "{error}");
    let mut config = SegmentConfig::default();
    config.map[0].r = "5-4".into();
    assert!(Segments::new(&config, windows).is_err());
    let config = SegmentConfig {
        frequency: [4, 2, 8, 15],
        ..SegmentConfig::default()
    };
    assert!(Segments::new(&config, windows).is_err());
    let config = SegmentConfig {
        lookback: Duration::from_secs(60 * 86_400),
        ..SegmentConfig::default()
    };
    assert!(
        Segments::new(&config, windows).is_err(),
        "longer than the retained buckets"
    );
    let off = SegmentConfig {
        enabled: false,
        ..SegmentConfig::default()
    };
    assert!(Segments::new(&off, windows).expect("valid").is_none());
}

#[test]
fn the_hash_changes_with_what_decides_a_segment() {
    let windows = Windows::new(&WindowConfig::default()).expect("windows");
    let base = segments().config_hash();
    let config = SegmentConfig {
        recency: [2, 4, 8, 22].map(|days| Duration::from_secs(days * 86_400).into()),
        ..SegmentConfig::default()
    };
    let other = Segments::new(&config, windows).expect("valid").expect("on");
    assert_ne!(other.config_hash(), base);
    assert_eq!(segments().config_hash(), base);
}

proptest! {
    /// The first change `next_change` names is the first day or bucket boundary at which the
    /// segment differs, found by trying every boundary for 60 days.
    #[test]
    fn next_change_is_the_first_boundary_where_the_segment_differs(
        active in prop::collection::btree_map(60i64..100, prop::sample::select(vec![0.0, 0.5, 3.0, 40.0, 250.0]), 1..30),
        last_offset in 0i64..DAY_MS,
        now_offset in 0i64..(5 * DAY_MS),
    ) {
        let s = segments();
        let days: Vec<(i64, f64)> = active.into_iter().collect();
        let last_day = days.last().expect("non-empty").0;
        let last_active = last_day * DAY_MS + last_offset;
        let p = profile(&days, last_active);
        let now = last_active + now_offset;
        let current = s.segment_at(&p, now);
        // Recency thresholds are whole days by default: every day after the last activity.
        let mut boundaries: Vec<i64> = (0..70)
            .flat_map(|k| [(now.div_euclid(DAY_MS) + k) * DAY_MS, last_active + k * DAY_MS])
            .filter(|t| *t > now)
            .collect();
        boundaries.sort_unstable();
        let expected = boundaries.into_iter().find(|t| s.segment_at(&p, *t) != current);
        prop_assert_eq!(s.next_change(&p, now), expected);
    }
}
