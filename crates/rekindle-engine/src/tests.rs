//! Engine semantics with hand-computed expectations.

use std::collections::BTreeMap;

use rekindle_events::{encode_event, ActivityEvent, EventDecoder, ReactivationTrigger};
use rekindle_rules::{HoldoutConfig, RuleBook, RuleBookConfig, RuleConfig, WindowConfig, Windows};
use rekindle_state::{Store, StoreOptions};
use rekindle_telemetry::Metrics;

use crate::{Emitted, Engine, EngineConfig, Record, RecordKind};

const DAY: i64 = 86_400_000;
/// 2023-11-14T00:00:00Z
const T0: i64 = 1_699_920_000_000;

fn lapsed_only() -> RuleBookConfig {
    RuleBookConfig {
        rules: BTreeMap::from([("lapsed_7d".to_string(), RuleConfig::lapsed_7d())]),
        ..RuleBookConfig::default()
    }
}

fn engine(dir: &std::path::Path) -> Engine {
    engine_with(dir, &lapsed_only())
}

fn engine_with(dir: &std::path::Path, rules: &RuleBookConfig) -> Engine {
    let store = Store::open(dir, &StoreOptions::default()).expect("store");
    let windows = Windows::new(&WindowConfig::default()).expect("windows");
    let config = EngineConfig {
        topic: "activity".into(),
        rules: RuleBook::new(windows, rules).expect("rule book"),
        decoder: EventDecoder::new(Vec::new(), 1 << 20).expect("decoder"),
        max_future_skew_ms: 60_000,
        growth: rekindle_rules::Growth::new(&rekindle_rules::GrowthConfig::default())
            .expect("default analytics are valid"),
    };
    Engine::new(store, config, Metrics::new().expect("metrics"))
}

fn event(user: &str, ts: i64) -> ActivityEvent {
    ActivityEvent {
        event_id: format!("{user}-{ts}"),
        user_id: user.into(),
        event_type: "app_open".into(),
        timestamp_ms: ts,
        session_seconds: 30,
        amount: 0.0,
        timezone: None,
        attributes: BTreeMap::new(),
    }
}

/// Feeds records to partition 0 from offset `*next` on.
struct Feed<'e> {
    engine: &'e mut Engine,
    next: i64,
    out: Emitted,
}

impl<'e> Feed<'e> {
    fn new(engine: &'e mut Engine) -> Feed<'e> {
        Feed {
            engine,
            next: 0,
            out: Emitted::default(),
        }
    }

    /// Users `a` and `b`, active at the start of days 0, 1 and 2.
    fn two_engaged_users(&mut self) {
        for d in 0..3 {
            self.event("a", T0 + d * DAY);
            self.event("b", T0 + d * DAY);
        }
    }

    fn event(&mut self, user: &str, ts: i64) {
        let kind = RecordKind::Event {
            event: Box::new(event(user, ts)),
            ingest_ms: None,
        };
        self.record(kind);
    }
    fn tick(&mut self, ts: i64) {
        self.record(RecordKind::Tick(ts));
    }
    fn record(&mut self, kind: RecordKind<'_>) {
        let record = Record {
            partition: 0,
            offset: self.next,
            kind,
        };
        self.engine.process(record, &mut self.out).expect("process");
        self.next += 1;
    }
    fn fired(&mut self) -> Vec<(String, i64)> {
        self.out
            .triggers
            .drain(..)
            .map(|t| (t.user_id, t.last_active_ms))
            .collect()
    }
}

#[test]
fn fires_when_the_clock_passes_the_deadline_and_not_before() {
    let dir = tempfile::tempdir().expect("dir");
    let mut e = engine(dir.path());
    let mut f = Feed::new(&mut e);
    for d in 0..3 {
        f.event("a", T0 + d * DAY);
    }
    let last = T0 + 2 * DAY;
    f.tick(last + 7 * DAY - 1);
    assert!(f.fired().is_empty());
    f.tick(last + 7 * DAY);
    assert_eq!(f.fired(), vec![("a".to_string(), last)]);
    f.tick(last + 30 * DAY);
    assert!(f.fired().is_empty(), "one trigger per episode");
}

#[test]
fn an_event_after_the_deadline_does_not_cancel_the_lapse_it_proves() {
    let dir = tempfile::tempdir().expect("dir");
    let mut e = engine(dir.path());
    let mut f = Feed::new(&mut e);
    for d in 0..3 {
        f.event("a", T0 + d * DAY);
    }
    // No tick: the user's own return, ten days later, is what moves the clock.
    f.event("a", T0 + 12 * DAY);
    assert_eq!(f.fired(), vec![("a".to_string(), T0 + 2 * DAY)]);
    // ...and it starts a new episode.
    f.tick(T0 + 19 * DAY);
    assert_eq!(f.fired(), vec![("a".to_string(), T0 + 12 * DAY)]);
}

#[test]
fn activity_before_the_deadline_cancels_and_reschedules() {
    let dir = tempfile::tempdir().expect("dir");
    let mut e = engine(dir.path());
    let mut f = Feed::new(&mut e);
    for d in 0..3 {
        f.event("a", T0 + d * DAY);
    }
    f.event("a", T0 + 8 * DAY);
    f.tick(T0 + 10 * DAY);
    assert!(f.fired().is_empty());
    f.tick(T0 + 15 * DAY);
    assert_eq!(f.fired(), vec![("a".to_string(), T0 + 8 * DAY)]);
}

#[test]
fn late_event_that_completes_eligibility_fires_at_once_when_overdue() {
    let dir = tempfile::tempdir().expect("dir");
    let mut e = engine(dir.path());
    let mut f = Feed::new(&mut e);
    f.event("a", T0);
    f.event("a", T0 + 2 * DAY);
    f.tick(T0 + 20 * DAY);
    assert!(f.fired().is_empty(), "two days: not eligible");
    // A late event for day 1 arrives: the episode of day 2 is now eligible and overdue.
    f.event("a", T0 + DAY);
    assert_eq!(f.fired(), vec![("a".to_string(), T0 + 2 * DAY)]);
}

#[test]
fn records_below_the_stored_offset_are_skipped_after_restart() {
    let dir = tempfile::tempdir().expect("dir");
    {
        let mut e = engine(dir.path());
        let mut f = Feed::new(&mut e);
        for d in 0..3 {
            f.event("a", T0 + d * DAY);
        }
        e.commit(&[]).expect("commit");
    }
    let mut e = engine(dir.path());
    assert_eq!(e.open_partition(0).expect("open"), Some(3));
    let mut f = Feed::new(&mut e);
    // Redelivery of offsets 0..3 changes nothing; offset 3 is new.
    for d in 0..3 {
        f.event("a", T0 + d * DAY);
    }
    f.tick(T0 + 9 * DAY);
    assert_eq!(f.fired(), vec![("a".to_string(), T0 + 2 * DAY)]);
    assert_eq!(e.stats().skipped_replayed, 3);
    let profile = e.store().profile(0, "a").expect("read").expect("stored");
    assert_eq!(
        profile.buckets.iter().map(|b| b.events).sum::<u32>(),
        3,
        "no double counting"
    );
}

#[test]
fn uncommitted_batches_replay_to_the_same_triggers() {
    let dir = tempfile::tempdir().expect("dir");
    let run = |commit: bool| {
        let mut e = engine(dir.path());
        let mut f = Feed::new(&mut e);
        for d in 0..4 {
            f.event("a", T0 + d * DAY);
            f.event("b", T0 + d * DAY + 1);
        }
        f.tick(T0 + 11 * DAY);
        let fired: Vec<ReactivationTrigger> = f.out.triggers.drain(..).collect();
        if commit {
            e.commit(&[]).expect("commit");
        }
        fired
    };
    let crashed = run(false);
    let again = run(true);
    assert_eq!(crashed.len(), 2);
    assert_eq!(
        crashed, again,
        "same ids, same fields after a crash before commit"
    );
}

#[test]
fn malformed_records_are_counted_and_skipped() {
    let dir = tempfile::tempdir().expect("dir");
    let mut e = engine(dir.path());
    let mut out = Emitted::default();
    let valid = encode_event(&event("a", T0), Some(1)).expect("encodes");
    let mut no_user = event("", T0);
    no_user.user_id.clear();
    let invalid = encode_event(&no_user, None).expect("encodes");
    let payloads: [&[u8]; 4] = [b"garbage", &valid[..4], &invalid, &valid];
    for (offset, payload) in payloads.iter().enumerate() {
        let kind = RecordKind::Avro {
            payload,
            timestamp_ms: Some(T0),
        };
        e.process(
            Record {
                partition: 0,
                offset: offset as i64,
                kind,
            },
            &mut out,
        )
        .expect("never an error");
    }
    let s = e.stats();
    assert_eq!((s.records, s.malformed, s.events), (4, 3, 1));
    assert_eq!(
        e.positions(),
        vec![(0, 4)],
        "malformed records still advance the offset"
    );
}

#[test]
fn future_event_times_are_clamped_for_the_clock_only() {
    let dir = tempfile::tempdir().expect("dir");
    let mut e = engine(dir.path());
    let mut out = Emitted::default();
    let far = encode_event(&event("a", T0 + 365 * DAY), None).expect("encodes");
    let kind = RecordKind::Avro {
        payload: &far,
        timestamp_ms: Some(T0),
    };
    e.process(
        Record {
            partition: 0,
            offset: 0,
            kind,
        },
        &mut out,
    )
    .expect("process");
    assert_eq!(
        e.clock_ms(0),
        Some(T0 + 60_000),
        "clock moves at most max_future_skew past ingest"
    );
}

#[test]
fn partitions_keep_separate_clocks() {
    let dir = tempfile::tempdir().expect("dir");
    let mut e = engine(dir.path());
    let mut out = Emitted::default();
    for d in 0..3 {
        let kind = RecordKind::Event {
            event: Box::new(event("a", T0 + d * DAY)),
            ingest_ms: None,
        };
        e.process(
            Record {
                partition: 1,
                offset: d,
                kind,
            },
            &mut out,
        )
        .expect("process");
    }
    // A tick on another partition does not fire partition 1's timers.
    e.process(
        Record {
            partition: 2,
            offset: 0,
            kind: RecordKind::Tick(T0 + 40 * DAY),
        },
        &mut out,
    )
    .expect("tick");
    assert!(out.is_empty());
    e.process(
        Record {
            partition: 1,
            offset: 3,
            kind: RecordKind::Tick(T0 + 40 * DAY),
        },
        &mut out,
    )
    .expect("tick");
    assert_eq!(out.triggers.len(), 1);
}

fn typed(user: &str, ts: i64, event_type: &str) -> RecordKind<'static> {
    let mut e = event(user, ts);
    e.event_type = event_type.into();
    RecordKind::Event {
        event: Box::new(e),
        ingest_ms: None,
    }
}

#[test]
fn deletion_removes_the_profile_its_timer_and_its_stage_count() {
    let dir = tempfile::tempdir().expect("dir");
    let mut e = engine(dir.path());
    let mut f = Feed::new(&mut e);
    f.two_engaged_users();
    f.record(typed("a", T0 + 3 * DAY, "user_deleted"));
    f.tick(T0 + 20 * DAY);
    assert_eq!(f.fired(), vec![("b".to_string(), T0 + 2 * DAY)]);
    e.commit(&[]).expect("commit");
    assert_eq!(e.store().profile(0, "a").expect("read"), None);
    assert!(e.store().profile(0, "b").expect("read").is_some());
    // The committed profile stays in memory decoded and in its stored form (what the
    // worker's cache gauges report); the deleted one in neither.
    assert_eq!(e.cached_profiles(), 1);
    let stored = e.stored_profile_bytes();
    assert!((32..4096).contains(&stored), "{stored} bytes for one user");
    let timers = e
        .store()
        .timers_between(0, i64::MIN, i64::MAX)
        .expect("timers");
    assert!(timers.iter().all(|(_, user)| user != "a"), "{timers:?}");
    let meta = e.store().meta(0).expect("meta").expect("stored");
    // b is at risk (silent 18 days); a is counted nowhere.
    assert_eq!(meta.stage_users, [0, 0, 1, 0, 0]);
}

#[test]
fn suppressed_decisions_come_out_as_audit_records() {
    let dir = tempfile::tempdir().expect("dir");
    let mut rules = lapsed_only();
    rules.policy.holdout = HoldoutConfig {
        percent: 100.0,
        salt: "s".into(),
    };
    let mut e = engine_with(dir.path(), &rules);
    let mut f = Feed::new(&mut e);
    f.two_engaged_users();
    f.record(typed("b", T0 + 3 * DAY, "opt_out"));
    f.tick(T0 + 20 * DAY);
    assert!(f.out.triggers.is_empty());
    let audit: Vec<(String, String, String)> = f
        .out
        .audit
        .iter()
        .map(|a| (a.trigger.user_id.clone(), a.reason.clone(), a.group.clone()))
        .collect();
    assert_eq!(
        audit,
        vec![
            ("a".into(), "holdout".into(), "holdout".into()),
            ("b".into(), "opted_out".into(), "holdout".into())
        ]
    );
    assert_eq!(e.stats().suppressed, 2);
}

#[test]
fn a_tick_touches_only_the_users_with_something_due() {
    let dir = tempfile::tempdir().expect("dir");
    let mut e = engine(dir.path());
    let mut f = Feed::new(&mut e);
    // 2,000 users active on day 14; one more user whose lapse falls due 10 s into it.
    for d in 5..8 {
        f.event("early", T0 + d * DAY + 10_000);
    }
    for u in 0..2_000 {
        f.event(&format!("u{u}"), T0 + 14 * DAY + u);
    }
    e.commit(&[]).expect("commit");
    assert_eq!(e.profiles_touched(0), 0);
    let mut out = Emitted::default();
    // Only "early" is due (its lapse and its at_risk stage): the tick loads no one else.
    e.process(
        Record {
            partition: 0,
            offset: 2_003,
            kind: RecordKind::Tick(T0 + 14 * DAY + 20_000),
        },
        &mut out,
    )
    .expect("tick");
    assert_eq!(out.triggers.len(), 1);
    assert_eq!(
        e.profiles_touched(0),
        1,
        "evaluation is proportional to due timers, not to users"
    );
}

/// The history of `changelog_restore_*`: two engaged users, committed; then a batch where
/// `a` returns on day 4 and the clock passes `b`'s deadline.
fn first_batch(f: &mut Feed<'_>) {
    f.two_engaged_users();
}

fn second_batch(f: &mut Feed<'_>) {
    f.event("a", T0 + 4 * DAY);
    f.tick(T0 + 10 * DAY);
}

#[test]
fn changelog_restore_after_a_crash_between_changelog_and_commit_counts_nothing_twice() {
    // The uninterrupted run.
    let whole = tempfile::tempdir().expect("dir");
    let mut reference = engine(whole.path());
    let mut f = Feed::new(&mut reference);
    first_batch(&mut f);
    second_batch(&mut f);
    let fired_once = f.fired();
    reference.commit(&[]).expect("commit");

    // The crashed run: batch 1 committed with its changelog; batch 2's profile records went
    // out, its meta record and the local commit did not.
    let lost = tempfile::tempdir().expect("dir");
    let mut crashed = engine(lost.path());
    let mut f = Feed::new(&mut crashed);
    first_batch(&mut f);
    let mut log: Vec<_> = f.engine.changelog().expect("changelog").remove(0).1;
    f.engine.commit(&[]).expect("commit");
    second_batch(&mut f);
    assert_eq!(f.fired(), fired_once);
    let tail = f.engine.changelog().expect("changelog").remove(0).1;
    log.extend(tail.into_iter().filter(|r| r.key != b"m"));

    // A new worker with an empty disk restores the partition, then reads from the stored
    // position: batch 2 again.
    let empty = tempfile::tempdir().expect("dir");
    let store = Store::open(empty.path(), &StoreOptions::default()).expect("store");
    let mut restore = store.restore(0, true).expect("restore");
    for r in &log {
        restore.apply(&r.key, r.value.as_deref()).expect("apply");
    }
    let summary = restore.finish(log.len() as i64).expect("finish");
    assert_eq!(summary.meta.map(|m| m.next_offset), Some(6));
    drop(store);
    let mut restored = engine(empty.path());
    assert_eq!(restored.open_partition(0).expect("open"), Some(6));
    let mut f = Feed::new(&mut restored);
    f.next = 6;
    second_batch(&mut f);
    assert!(
        f.fired().is_empty(),
        "b's trigger went out before the changelog and is in b's profile"
    );
    assert_eq!(restored.stats().skipped_replayed, 1, "a's day-4 event");
    restored.commit(&[]).expect("commit");
    for user in ["a", "b"] {
        assert_eq!(
            restored.store().profile(0, user).expect("read"),
            reference.store().profile(0, user).expect("read"),
            "{user}"
        );
    }
    assert_eq!(
        restored
            .store()
            .meta(0)
            .expect("meta")
            .map(|m| (m.next_offset, m.stage_users)),
        reference
            .store()
            .meta(0)
            .expect("meta")
            .map(|m| (m.next_offset, m.stage_users))
    );
}

#[test]
fn growth_gauges_follow_the_figures_at_each_commit() {
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(dir.path(), &StoreOptions::default()).expect("store");
    let windows = Windows::new(&WindowConfig::default()).expect("windows");
    let metrics = Metrics::new().expect("metrics");
    let config = EngineConfig {
        topic: "activity".into(),
        rules: RuleBook::new(windows, &lapsed_only()).expect("rule book"),
        decoder: EventDecoder::new(Vec::new(), 1 << 20).expect("decoder"),
        max_future_skew_ms: 60_000,
        growth: rekindle_rules::Growth::new(&rekindle_rules::GrowthConfig::default())
            .expect("default analytics are valid"),
    };
    let mut e = Engine::new(store, config, metrics.clone());
    let mut f = Feed::new(&mut e);
    // Cohort of day 0: a and b active on days 0-2, c on day 0 and again on day 7.
    f.two_engaged_users();
    f.event("c", T0);
    f.event("c", T0 + 7 * DAY + 5);
    // Far behind a's latest day: left out of the figures, and counted as such.
    f.event("a", T0 - 40 * DAY);
    f.tick(T0 + 9 * DAY + 3_600_000);
    e.commit(&[]).expect("commit");
    let text = metrics.render();
    for expected in [
        // Day 9: nobody today, c within the week, everyone within the month.
        r#"rekindle_growth_active_users{partition="0",window="1d"} 0"#,
        r#"rekindle_growth_active_users{partition="0",window="7d"} 1"#,
        r#"rekindle_growth_active_users{partition="0",window="30d"} 3"#,
        // Day 7 of cohort 0 ended on day 7; cohort 1 (empty) is the latest complete one.
        r#"rekindle_growth_cohort_users{cohorts="latest",day="7",partition="0"} 0"#,
        r#"rekindle_growth_cohort_users{cohorts="last7",day="7",partition="0"} 3"#,
        r#"rekindle_growth_cohort_returned_users{cohorts="last7",day="7",partition="0"} 1"#,
        r#"rekindle_growth_cohort_users{cohorts="last7",day="1",partition="0"} 0"#,
        r#"rekindle_growth_uncounted_activity_total{reason="too_late"} 1"#,
        r#"rekindle_growth_uncounted_activity_total{reason="ahead"} 0"#,
    ] {
        assert!(text.contains(expected), "missing {expected}\n{text}");
    }
    let figures = e.store().growth(0).expect("stored figures");
    // Day numbers count from 1970-01-01; T0 is a UTC midnight.
    let day0 = T0 / DAY;
    assert_eq!(figures.day(day0 + 2).dau, 2);
    assert_eq!(figures.day(day0 + 9).wau, 1);
    let cohort = figures.cohort(day0);
    assert_eq!(cohort.users, 3);
    assert_eq!(cohort.returned, [2, 1, 0], "a and b on day 1, c on day 7");
    assert_eq!(
        cohort.rolling,
        [3, 1, 0],
        "day 1 or later: all; day 7 or later: c"
    );
}

/// Users per segment from the stored profiles, each judged at the clock: what the counts
/// must be if every segment change was counted in time (stored profiles catch up with the
/// changes counted without them only when next read).
fn recounted_segments(engine: &Engine, segments: &rekindle_rules::Segments) -> Vec<i64> {
    let clock = engine.clock_ms(0).expect("open partition");
    let mut counts = vec![0i64; segments.names().len()];
    for (_, profile) in engine.store().profiles(0).expect("profiles") {
        let segment = segments
            .segment_at(&profile, clock)
            .expect("active users have one");
        counts[usize::from(segment)] += 1;
    }
    counts
}

fn stored_segment_counts(engine: &Engine, n: usize) -> Vec<i64> {
    let meta = engine.store().meta(0).expect("meta").expect("stored");
    meta.segment_users[..n].to_vec()
}

fn engine_with_segments(
    dir: &std::path::Path,
    segments: rekindle_rules::SegmentConfig,
    metrics: Metrics,
) -> Engine {
    let store = Store::open(dir, &StoreOptions::default()).expect("store");
    let windows = Windows::new(&WindowConfig::default()).expect("windows");
    let rules = RuleBookConfig {
        segments,
        ..lapsed_only()
    };
    let config = EngineConfig {
        topic: "activity".into(),
        rules: RuleBook::new(windows, &rules).expect("rule book"),
        decoder: EventDecoder::new(Vec::new(), 1 << 20).expect("decoder"),
        max_future_skew_ms: 60_000,
        growth: None,
    };
    Engine::new(store, config, metrics)
}

#[test]
fn segment_counts_stay_exact_as_time_passes_and_after_a_configuration_change() {
    let dir = tempfile::tempdir().expect("dir");
    let metrics = Metrics::new().expect("metrics");
    let mut e = engine_with_segments(
        dir.path(),
        rekindle_rules::SegmentConfig::default(),
        metrics.clone(),
    );
    let segments = e.rules().segments().expect("on").clone();
    let names = segments.names().len();
    // 300 users over 60 days with habits of different strength and the odd purchase, and a
    // tick every six hours so that recency and the lookback move users between segments.
    let mut seed = 7u64;
    let mut next = move |n: u64| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (seed >> 33) % n
    };
    let mut f = Feed::new(&mut e);
    for hour in (0..60 * 24).step_by(6) {
        let at = T0 + hour * 3_600_000;
        for user in 0..300u64 {
            // User u is active in a given six hours with probability about u/1200.
            if next(1200) < user {
                let mut ev = event(&format!("u{user:03}"), at + next(3_600_000) as i64);
                if next(20) == 0 {
                    ev.amount = [5.0, 50.0, 700.0][next(3) as usize];
                }
                let kind = RecordKind::Event {
                    event: Box::new(ev),
                    ingest_ms: None,
                };
                f.record(kind);
            }
        }
        f.tick(at + 6 * 3_600_000 - 1);
        if hour % 72 == 66 {
            f.engine.commit(&[]).expect("commit");
            let stored = stored_segment_counts(f.engine, names);
            assert_eq!(
                stored,
                recounted_segments(f.engine, &segments),
                "hour {hour}"
            );
        }
    }
    f.engine.commit(&[]).expect("commit");
    let stored = stored_segment_counts(&e, names);
    assert!(stored.iter().filter(|n| **n > 0).count() >= 4, "{stored:?}");
    let text = metrics.render();
    let champions = format!(
        "rekindle_growth_segment_users{{partition=\"0\",segment=\"champions\"}} {}",
        stored[0]
    );
    assert!(text.contains(&champions), "{champions}\n{text}");
    drop(e);

    // Another map: at open, every stored segment and the counts are recomputed.
    let changed = rekindle_rules::SegmentConfig {
        map: vec![
            rekindle_rules::SegmentRuleConfig {
                name: "recent".into(),
                r: "4-5".into(),
                f: "1-5".into(),
                m: "1-5".into(),
            },
            rekindle_rules::SegmentRuleConfig {
                name: "quiet".into(),
                r: "1-3".into(),
                f: "1-5".into(),
                m: "1-5".into(),
            },
        ],
        ..rekindle_rules::SegmentConfig::default()
    };
    let mut e = engine_with_segments(dir.path(), changed, Metrics::new().expect("metrics"));
    let segments = e.rules().segments().expect("on").clone();
    e.open_partition(0).expect("open");
    let stored = stored_segment_counts(&e, 2);
    assert_eq!(stored, recounted_segments(&e, &segments));
    let users = e.store().profiles(0).expect("profiles").len() as i64;
    assert!(users > 250, "{users} users");
    assert_eq!(stored.iter().sum::<i64>(), users);
    assert_eq!(
        e.store().meta(0).expect("meta").expect("stored").plan_hash,
        e.rules().plan_hash()
    );
    drop(e);

    // Back to the default map, then segments off for a while: the stored ones go stale, so
    // the next start with them on must recompute them although its configuration is the
    // one they were last counted under.
    let mut e = engine_with_segments(
        dir.path(),
        rekindle_rules::SegmentConfig::default(),
        Metrics::new().expect("metrics"),
    );
    e.open_partition(0).expect("open");
    let planned_with_segments = e.rules().plan_hash();
    drop(e);
    let off = rekindle_rules::SegmentConfig {
        enabled: false,
        ..rekindle_rules::SegmentConfig::default()
    };
    let mut e = engine_with_segments(dir.path(), off, Metrics::new().expect("metrics"));
    let next = e.open_partition(0).expect("open").expect("stored position");
    let mut f = Feed::new(&mut e);
    f.next = next;
    f.tick(T0 + 90 * DAY);
    f.engine.commit(&[]).expect("commit");
    let meta = e.store().meta(0).expect("meta").expect("stored");
    assert_eq!(
        meta.plan_hash,
        e.rules().plan_hash(),
        "planned without segments"
    );
    assert_ne!(meta.plan_hash, planned_with_segments);
    assert_eq!(meta.segment_users, [0; rekindle_rules::MAX_SEGMENTS]);
    drop(e);
    let mut e = engine_with_segments(
        dir.path(),
        rekindle_rules::SegmentConfig::default(),
        Metrics::new().expect("metrics"),
    );
    let segments = e.rules().segments().expect("on").clone();
    e.open_partition(0).expect("open");
    assert_eq!(
        stored_segment_counts(&e, segments.names().len()),
        recounted_segments(&e, &segments),
        "recomputed at a clock 30 days on"
    );
}

/// Every rule and segments on, planning at most `steps` counted changes ahead.
fn engine_with_steps(dir: &std::path::Path, steps: usize) -> Engine {
    let store = Store::open(dir, &StoreOptions::default()).expect("store");
    let windows = Windows::new(&WindowConfig::default()).expect("windows");
    let mut rules = lapsed_only();
    let day = |n: u64| Some(std::time::Duration::from_secs(n * 86_400));
    rules.rules.insert(
        "new_user".into(),
        RuleConfig {
            kind: Some(rekindle_rules::RuleKind::NewUserNoReturn),
            priority: 10,
            first_seen_within: day(14),
            return_within: day(2),
            ..RuleConfig::default()
        },
    );
    rules.rules.insert(
        "dormant".into(),
        RuleConfig {
            kind: Some(rekindle_rules::RuleKind::Dormant),
            priority: 5,
            inactive_for: day(21),
            ..RuleConfig::default()
        },
    );
    let config = EngineConfig {
        topic: "activity".into(),
        rules: RuleBook::new(windows, &rules)
            .expect("rule book")
            .with_count_steps(steps),
        decoder: EventDecoder::new(Vec::new(), 1 << 20).expect("decoder"),
        max_future_skew_ms: 60_000,
        growth: None,
    };
    Engine::new(store, config, Metrics::new().expect("metrics"))
}

/// What a partition counts and holds pending, as committed.
fn counted(engine: &Engine) -> Option<([i64; 5], Vec<i64>, i64)> {
    let meta = engine.store().meta(0).expect("meta")?;
    Some((
        meta.stage_users,
        meta.segment_users.to_vec(),
        meta.pending_timers,
    ))
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 48, ..Default::default() })]

    /// Counting stage and segment changes from timer entries, without reading profiles,
    /// gives the same counts, pending timers and decisions as waking every user at every
    /// change, across commits and restarts (decisions compared as sets: see below).
    #[test]
    fn counted_steps_agree_with_waking_at_every_change(
        ops in proptest::collection::vec((0u8..12, 0usize..12, 0i64..(3 * DAY), 0usize..3), 1..120),
    ) {
        let (lazy_dir, eager_dir) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
        let open = |lazy: bool| {
            if lazy {
                engine_with_steps(lazy_dir.path(), rekindle_rules::COUNT_STEPS)
            } else {
                engine_with_steps(eager_dir.path(), 0)
            }
        };
        let mut engines = [open(true), open(false)];
        let mut outs = [Emitted::default(), Emitted::default()];
        let mut next = 0i64;
        let mut now = T0;
        let mut decided: [Vec<(String, String)>; 2] = [Vec::new(), Vec::new()];
        let ops = ops.into_iter().chain([(6, 0, 200 * DAY, 0), (7, 0, 0, 0)]);
        for (op, user, dt, amount) in ops {
            now += dt;
            let mut event = event(&format!("u{user}"), now);
            event.amount = [0.0, 40.0, 600.0][amount];
            let kind = match op {
                0..=5 => Some(event),
                8 => Some(ActivityEvent { event_type: "opt_out".into(), ..event }),
                9 => Some(ActivityEvent { event_type: "user_deleted".into(), ..event }),
                _ => None,
            };
            for (engine, out) in engines.iter_mut().zip(outs.iter_mut()) {
                let kind = match (&kind, op) {
                    (Some(event), _) => RecordKind::Event { event: Box::new(event.clone()), ingest_ms: None },
                    (None, 6) => RecordKind::Tick(now),
                    _ => continue,
                };
                engine.process(Record { partition: 0, offset: next, kind }, out).expect("process");
            }
            if matches!(op, 0..=6 | 8 | 9) {
                next += 1;
            }
            if matches!(op, 7 | 10 | 11) {
                for ((engine, out), decided) in engines.iter_mut().zip(outs.iter_mut()).zip(decided.iter_mut()) {
                    engine.commit(&[]).expect("commit");
                    decided.extend(out.triggers.drain(..).map(|t| (t.trigger_id, "sent".to_string())));
                    decided.extend(out.audit.drain(..).map(|a| (a.trigger.trigger_id, a.decision)));
                    // Within one advance of the clock, users due by then may be woken in
                    // another order: an eager wake at a change finds a deadline passed too.
                    decided.sort();
                }
                proptest::prop_assert_eq!(counted(&engines[0]), counted(&engines[1]));
                proptest::prop_assert_eq!(&decided[0], &decided[1]);
            }
            if op == 11 {
                drop(engines);
                engines = [open(true), open(false)];
                for engine in &mut engines {
                    engine.open_partition(0).expect("open");
                }
            }
        }
        let [lazy, eager] = &engines;
        proptest::prop_assert_eq!(lazy.stats().triggers, eager.stats().triggers);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 32, ..Default::default() })]

    /// A worker that loses its disk and restores the partition from its changelog (then plans
    /// every user anew) goes on with the same decisions, counts and pending timers as one
    /// that never lost anything.
    #[test]
    fn a_restore_from_the_changelog_changes_no_decision(
        ops in proptest::collection::vec((0u8..10, 0usize..12, 0i64..(3 * DAY), 0usize..3), 1..120),
    ) {
        let kept_dir = tempfile::tempdir().expect("dir");
        let mut kept = engine_with_steps(kept_dir.path(), rekindle_rules::COUNT_STEPS);
        let mut dirs = vec![tempfile::tempdir().expect("dir")];
        let mut restored = engine_with_steps(dirs[0].path(), rekindle_rules::COUNT_STEPS);
        let mut log: Vec<rekindle_state::ChangelogRecord> = Vec::new();
        let mut outs = [Emitted::default(), Emitted::default()];
        let mut decided: [Vec<(String, String)>; 2] = [Vec::new(), Vec::new()];
        let mut next = 0i64;
        let mut now = T0;
        let ops = ops.into_iter().chain([(6, 0, 200 * DAY, 0), (7, 0, 0, 0)]);
        for (op, user, dt, amount) in ops {
            now += dt;
            let mut event = event(&format!("u{user}"), now);
            event.amount = [0.0, 40.0, 600.0][amount];
            if matches!(op, 0..=6) {
                let [out_kept, out_restored] = &mut outs;
                for (engine, out) in [(&mut kept, out_kept), (&mut restored, out_restored)] {
                    let kind = if op == 6 {
                        RecordKind::Tick(now)
                    } else {
                        RecordKind::Event { event: Box::new(event.clone()), ingest_ms: None }
                    };
                    engine.process(Record { partition: 0, offset: next, kind }, out).expect("process");
                }
                next += 1;
                continue;
            }
            // Commit both; the restoring side keeps its changelog.
            for (out, decided) in outs.iter_mut().zip(decided.iter_mut()) {
                decided.extend(out.triggers.drain(..).map(|t| (t.trigger_id, "sent".to_string())));
                decided.extend(out.audit.drain(..).map(|a| (a.trigger.trigger_id, a.decision)));
                decided.sort();
            }
            for (_, records) in restored.changelog().expect("changelog") {
                log.extend(records);
            }
            kept.commit(&[]).expect("commit");
            restored.commit(&[]).expect("commit");
            proptest::prop_assert_eq!(&decided[0], &decided[1]);
            proptest::prop_assert_eq!(counted(&kept), counted(&restored));
            if op == 9 && !log.is_empty() {
                // The disk is lost: a new store from the changelog alone.
                drop(restored);
                let dir = tempfile::tempdir().expect("dir");
                let store = Store::open(dir.path(), &StoreOptions::default()).expect("store");
                let mut restore = store.restore(0, true).expect("restore");
                for r in &log {
                    restore.apply(&r.key, r.value.as_deref()).expect("apply");
                }
                restore.finish(log.len() as i64).expect("finish");
                drop(store);
                dirs.push(dir);
                restored = engine_with_steps(dirs[dirs.len() - 1].path(), rekindle_rules::COUNT_STEPS);
                proptest::prop_assert_eq!(restored.open_partition(0).expect("open"), Some(next));
                let (a, b) = (counted(&kept), counted(&restored));
                proptest::prop_assert_eq!(a, b, "counts and pending timers after the restore");
            }
        }
    }
}
