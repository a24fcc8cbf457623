//! Engine semantics with hand-computed expectations.

use std::collections::BTreeMap;

use rekindle_events::{encode_event, ActivityEvent, EventDecoder, ReactivationTrigger};
use rekindle_rules::{LapsedConfig, LapsedRule, WindowConfig, Windows};
use rekindle_state::{Store, StoreOptions};
use rekindle_telemetry::Metrics;

use crate::{Engine, EngineConfig, Record, RecordKind, RuleSet};

const DAY: i64 = 86_400_000;
/// 2023-11-14T00:00:00Z
const T0: i64 = 1_699_920_000_000;

fn engine(dir: &std::path::Path) -> Engine {
    let store = Store::open(dir, &StoreOptions::default()).expect("store");
    let windows = Windows::new(&WindowConfig::default()).expect("windows");
    let rule = LapsedRule::new("lapsed_7d", &LapsedConfig::default(), windows).expect("rule");
    let config = EngineConfig {
        topic: "activity".into(),
        rules: RuleSet::new(windows, rule),
        decoder: EventDecoder::new(Vec::new(), 1 << 20).expect("decoder"),
        max_future_skew_ms: 60_000,
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
    out: Vec<ReactivationTrigger>,
}

impl Feed<'_> {
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
            .drain(..)
            .map(|t| (t.user_id, t.last_active_ms))
            .collect()
    }
}

#[test]
fn fires_when_the_clock_passes_the_deadline_and_not_before() {
    let dir = tempfile::tempdir().expect("dir");
    let mut e = engine(dir.path());
    let mut f = Feed {
        engine: &mut e,
        next: 0,
        out: Vec::new(),
    };
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
    let mut f = Feed {
        engine: &mut e,
        next: 0,
        out: Vec::new(),
    };
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
    let mut f = Feed {
        engine: &mut e,
        next: 0,
        out: Vec::new(),
    };
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
    let mut f = Feed {
        engine: &mut e,
        next: 0,
        out: Vec::new(),
    };
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
        let mut f = Feed {
            engine: &mut e,
            next: 0,
            out: Vec::new(),
        };
        for d in 0..3 {
            f.event("a", T0 + d * DAY);
        }
        e.commit().expect("commit");
    }
    let mut e = engine(dir.path());
    assert_eq!(e.open_partition(0).expect("open"), Some(3));
    let mut f = Feed {
        engine: &mut e,
        next: 0,
        out: Vec::new(),
    };
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
        let mut f = Feed {
            engine: &mut e,
            next: 0,
            out: Vec::new(),
        };
        for d in 0..4 {
            f.event("a", T0 + d * DAY);
            f.event("b", T0 + d * DAY + 1);
        }
        f.tick(T0 + 11 * DAY);
        let fired: Vec<ReactivationTrigger> = f.out.drain(..).collect();
        if commit {
            e.commit().expect("commit");
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
    let mut out = Vec::new();
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
    let mut out = Vec::new();
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
    let mut out = Vec::new();
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
    assert_eq!(out.len(), 1);
}
