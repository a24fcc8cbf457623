//! Criterion micro-benchmarks of the hot path: Avro decode, rule evaluation, state batch
//! flush, timer scans, and the engine per record. `make bench` runs them; docs/performance.md
//! records the figures.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rekindle_engine::{Emitted, Engine, EngineConfig, Record, RecordKind};
use rekindle_events::{encode_event, ActivityEvent, EventDecoder};
use rekindle_rules::{Activity, Outcome, UserProfile};
use rekindle_state::{PartitionState, Store, StoreOptions};
use rekindle_telemetry::Metrics;

mod support;
use support::rule_book_with;

const DAY: i64 = 86_400_000;
/// 2026-01-01T00:00:00Z
const T0: i64 = 1_767_225_600_000;

fn event(user: usize, ts: i64) -> ActivityEvent {
    ActivityEvent {
        event_id: format!("e-{user}-{ts}"),
        user_id: format!("user-{user:07}"),
        event_type: "session_start".into(),
        timestamp_ms: ts,
        session_seconds: 240,
        amount: 0.0,
        timezone: Some("Europe/Berlin".into()),
        attributes: BTreeMap::from([("platform".to_string(), "ios".to_string())]),
    }
}

fn decode(c: &mut Criterion) {
    let decoder = EventDecoder::new(Vec::new(), 1 << 20).expect("decoder");
    let payload = encode_event(&event(42, T0), Some(7)).expect("encode");
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("avro_activity_event", |b| {
        b.iter(|| decoder.decode(black_box(&payload)).expect("decodes"))
    });
    group.finish();
}

fn rules(c: &mut Criterion) {
    let book = rule_book_with(true);
    // A user active most days of the last five weeks: every rule has history to weigh.
    let mut profile = UserProfile::default();
    let mut outcome = Outcome::default();
    let mut now = T0;
    for day in 0..35 {
        if day % 5 != 3 {
            now = T0 + day * DAY + 9 * 3_600_000;
            let activity = Activity {
                timestamp_ms: now,
                session_seconds: 300,
                amount: 0.0,
                timezone: Some("Europe/Berlin"),
            };
            profile.wake_at_ms = book
                .on_activity("u", &mut profile, activity, now, &mut outcome)
                .full_ms;
            outcome.clear();
        }
    }
    let mut group = c.benchmark_group("rules");
    group.throughput(Throughput::Elements(1));
    group.bench_function("on_activity_all_default_rules", |b| {
        b.iter_batched_ref(
            || profile.clone(),
            |p| {
                let activity = Activity {
                    timestamp_ms: now + 3_600_000,
                    session_seconds: 120,
                    amount: 0.0,
                    timezone: Some("Europe/Berlin"),
                };
                outcome.clear();
                book.on_activity("u", p, activity, now + 3_600_000, &mut outcome)
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("on_wake_all_default_rules", |b| {
        b.iter_batched_ref(
            || profile.clone(),
            |p| {
                outcome.clear();
                book.on_wake("u", p, now + 8 * DAY, &mut outcome)
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn state(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(dir.path(), &StoreOptions::default()).expect("store");
    let profile = {
        let mut p = UserProfile::default();
        let book = rule_book_with(true);
        let mut outcome = Outcome::default();
        for day in 0..35 {
            let ts = T0 + day * DAY;
            let activity = Activity {
                timestamp_ms: ts,
                session_seconds: 60,
                amount: 0.0,
                timezone: None,
            };
            p.wake_at_ms = book
                .on_activity("u", &mut p, activity, ts, &mut outcome)
                .full_ms;
            outcome.clear();
        }
        p
    };
    let mut group = c.benchmark_group("state");
    const USERS: usize = 1_000;
    group.throughput(Throughput::Elements(USERS as u64));
    let mut round: i64 = 0;
    group.bench_function("batch_of_1000_profiles_read_modify_write", |b| {
        b.iter(|| {
            round += 1;
            let mut p = PartitionState::open(&store, 0).expect("open");
            for user in 0..USERS {
                let id = format!("user-{user:07}");
                let stored = p.profile_mut(&id).expect("profile");
                if stored.buckets.is_empty() {
                    *stored = profile.clone();
                }
                let before = stored.wake_at_ms;
                stored.last_active_ms = T0 + round;
                let wake = Some(T0 + 40 * DAY + round);
                stored.wake_at_ms = wake;
                p.move_timer(&id, before, wake.map(|t| (t, Vec::new())));
            }
            p.set_next_offset(round);
            p.flush(None).expect("flush");
        })
    });
    group.finish();
}

fn timers(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(dir.path(), &StoreOptions::default()).expect("store");
    const PENDING: i64 = 100_000;
    const DUE: i64 = 1_000;
    const STEP: i64 = 1_000;
    let mut p = PartitionState::open(&store, 0).expect("open");
    for user in 0..PENDING {
        p.move_timer(
            &format!("user-{user:07}"),
            None,
            Some((T0 + user * STEP, Vec::new())),
        );
    }
    p.set_next_offset(1);
    p.flush(None).expect("flush");
    let mut group = c.benchmark_group("timers");
    group.throughput(Throughput::Elements(DUE as u64));
    // Steady state: each round takes the next 1,000 due timers of 100,000 pending, re-arms
    // them behind the others and commits, so the index neither drains nor grows.
    let mut now = T0 - STEP;
    group.bench_function("take_and_rearm_1000_due_of_100k_pending", |b| {
        b.iter(|| {
            now += DUE * STEP;
            let due = p.take_due(now).expect("take due");
            assert_eq!(due.len(), DUE as usize);
            for timer in &due {
                p.move_timer(
                    &timer.user_id,
                    None,
                    Some((timer.due_ms + PENDING * STEP, Vec::new())),
                );
            }
            p.flush(None).expect("flush");
        })
    });
    group.finish();
}

fn engine(c: &mut Criterion) {
    const USERS: usize = 10_000;
    const EVENTS: usize = 50_000;
    let payloads: Vec<Vec<u8>> = (0..EVENTS)
        .map(|i| {
            let user = (i * 7_919) % USERS;
            encode_event(&event(user, T0 + (i as i64) * 60_000), None).expect("encode")
        })
        .collect();
    let mut group = c.benchmark_group("engine");
    group.sample_size(10);
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("process_50k_avro_events_10k_users_default_rules", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().expect("dir");
                let store = Store::open(dir.path(), &StoreOptions::default()).expect("store");
                let config = EngineConfig {
                    topic: "activity".into(),
                    rules: rule_book_with(true),
                    decoder: EventDecoder::new(Vec::new(), 1 << 20).expect("decoder"),
                    max_future_skew_ms: 300_000,
                    growth: rekindle_rules::Growth::new(&rekindle_rules::GrowthConfig::default())
                        .expect("default analytics are valid"),
                };
                (
                    dir,
                    Engine::new(store, config, Metrics::new().expect("metrics")),
                )
            },
            |(dir, mut engine)| {
                let mut out = Emitted::default();
                for (offset, payload) in payloads.iter().enumerate() {
                    let record = Record {
                        partition: 0,
                        offset: offset as i64,
                        kind: RecordKind::Avro {
                            payload,
                            timestamp_ms: None,
                        },
                    };
                    engine.process(record, &mut out).expect("process");
                    if offset % 5_000 == 4_999 {
                        engine.commit(&[]).expect("commit");
                        out.clear();
                    }
                }
                engine.commit(&[]).expect("commit");
                (dir, engine)
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, decode, rules, state, timers, engine);
criterion_main!(benches);
