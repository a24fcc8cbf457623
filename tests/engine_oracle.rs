//! The engine against the brute-force oracle of src/support, on random histories with clock
//! ticks interleaved in time order: the triggers must be exactly the oracle's, whatever the
//! batch (commit) boundaries.

use rekindle_suite::support;

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use rekindle_engine::{Emitted, Engine, EngineConfig, Record, RecordKind};
use rekindle_events::{ActivityEvent, EventDecoder};
use rekindle_rules::{RuleBook, RuleBookConfig, RuleConfig, WindowConfig, Windows};
use rekindle_state::{Store, StoreOptions};
use rekindle_telemetry::Metrics;
use support::histories::expected;
use support::DAY;

/// 2024-03-01T00:00:00Z
const T0: i64 = 1_709_251_200_000;

fn engine(dir: &std::path::Path) -> Engine {
    let store = Store::open(dir, &StoreOptions::default()).expect("store");
    let windows = Windows::new(&WindowConfig::default()).expect("windows");
    // The oracle specifies lapsed_7d alone, without delivery policies.
    let rules = RuleBookConfig {
        rules: BTreeMap::from([("lapsed_7d".to_string(), RuleConfig::lapsed_7d())]),
        ..RuleBookConfig::default()
    };
    let config = EngineConfig {
        topic: "activity".into(),
        rules: RuleBook::new(windows, &rules).expect("rule book"),
        decoder: EventDecoder::new(Vec::new(), 1 << 20).expect("decoder"),
        max_future_skew_ms: 0,
        growth: rekindle_rules::Growth::new(&rekindle_rules::GrowthConfig::default())
            .expect("default analytics are valid"),
    };
    Engine::new(store, config, Metrics::new().expect("metrics"))
}

fn event(user: usize, ts: i64, serial: usize) -> ActivityEvent {
    ActivityEvent {
        event_id: format!("e{serial}"),
        user_id: format!("u{user}"),
        event_type: "app_open".into(),
        timestamp_ms: ts,
        session_seconds: 0,
        amount: 0.0,
        timezone: None,
        attributes: BTreeMap::new(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn engine_fires_exactly_what_the_oracle_expects(
        raw in proptest::collection::vec((0usize..5, 0i64..(60 * DAY)), 1..120),
        ticks in proptest::collection::vec(0i64..(75 * DAY), 0..10),
        commit_every in 1usize..50,
    ) {
        let mut events: Vec<ActivityEvent> =
            raw.iter().enumerate().map(|(i, (u, t))| event(*u, T0 + t, i)).collect();
        events.sort_by(|a, b| (a.timestamp_ms, &a.event_id).cmp(&(b.timestamp_ms, &b.event_id)));
        let mut ticks: Vec<i64> = ticks.iter().map(|t| T0 + t).collect();
        ticks.sort_unstable();
        let until = T0 + 80 * DAY;

        // Merge ticks into the event stream in time order (a tick after events of its time).
        let mut records: Vec<RecordKind<'static>> = Vec::new();
        let mut pending_ticks = ticks.iter().peekable();
        for e in &events {
            while let Some(t) = pending_ticks.next_if(|t| **t < e.timestamp_ms) {
                records.push(RecordKind::Tick(*t));
            }
            records.push(RecordKind::Event { event: Box::new(e.clone()), ingest_ms: None });
        }
        records.extend(pending_ticks.map(|t| RecordKind::Tick(*t)));
        records.push(RecordKind::Tick(until));

        let dir = tempfile::tempdir().expect("dir");
        let mut engine = engine(dir.path());
        let mut emitted = Emitted::default();
        for (offset, kind) in records.into_iter().enumerate() {
            engine.process(Record { partition: 0, offset: offset as i64, kind }, &mut emitted).expect("process");
            if offset % commit_every == 0 {
                engine.commit(&[]).expect("commit");
            }
        }
        let fired = &emitted.triggers;
        prop_assert!(emitted.audit.is_empty(), "no policy suppresses anything here");
        let got: BTreeSet<(String, i64, i64)> =
            fired.iter().map(|t| (t.user_id.clone(), t.last_active_ms, t.due_at_ms)).collect();
        prop_assert_eq!(got.len(), fired.len(), "no episode fires twice");
        prop_assert_eq!(got, expected(&events, until));
    }
}
