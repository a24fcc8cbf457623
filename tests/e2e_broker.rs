//! End to end against a real broker process: Avro activity in, triggers out.
//!
//! 1,000 users with scripted histories (eligible and not, lapsed and returning) are produced
//! to the activity topic together with malformed records; the worker must put exactly the
//! expected triggers on the delivery topic, each decodable with the schema file, count and
//! skip every malformed record, and agree with `rekindle replay` on the same histories.

use rekindle_suite::support;

use std::collections::BTreeSet;
use std::time::Duration;

use rekindle_events::encode_event;
use support::broker::{create_topic, produce, Batching, Broker};
use support::histories::{
    assert_same_episodes, avro_payloads, expected, scripted, write_replay_file,
};
use support::worker::{
    http_get, log_lines, read_topic, replayed_trigger_ids, write_config_with, TriggerReader,
    Worker, WorkerOptions, DEAD_LETTERS, LAPSED_ONLY,
};

const SHADOW_EXPERIMENT: &str = r#"
[rules.dormant_trial]
kind = "dormant"
mode = "shadow"
inactive_for = "30d"
arms = [
  { name = "email", percent = 50.0 },
  { name = "holdout", percent = 50.0, holdout = true },
]
"#;
use support::{now_ms, DAY};

fn malformed_records(
    n: usize,
    template: &rekindle_events::ActivityEvent,
) -> Vec<(String, Vec<u8>)> {
    let valid = encode_event(template, Some(1)).expect("encodes");
    let mut no_user = template.clone();
    no_user.user_id.clear();
    (0..n)
        .map(|i| {
            let payload = match i % 5 {
                0 => b"definitely not avro".to_vec(),
                1 => valid[..valid.len() / 2].to_vec(),
                2 => Vec::new(),
                3 => encode_event(&no_user, None).expect("encodes"),
                _ => vec![0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0x0f],
            };
            (format!("bad-{i}"), payload)
        })
        .collect()
}

#[test]
fn live_run_emits_exactly_the_expected_triggers_and_matches_replay() {
    let broker = Broker::start();
    let t0 = (now_ms() - 60 * DAY).div_euclid(DAY) * DAY;
    let events = scripted(1000, t0, 7);
    let until = now_ms();
    let expected = expected(&events, until);
    assert!(
        expected.len() > 500,
        "the script should produce a substantial trigger set"
    );

    create_topic(&broker.address, "activity", 4);
    create_topic(&broker.address, "triggers", 2);
    create_topic(&broker.address, DEAD_LETTERS, 1);
    let mut records = avro_payloads(&events);
    let bad = malformed_records(25, &events[0]);
    for (i, record) in bad.into_iter().enumerate() {
        records.insert(i * records.len() / 25, record);
    }
    produce(&broker.address, "activity", &records, Batching::Default);

    let dir = tempfile::tempdir().expect("temp dir");
    // A shadow rule running an experiment: it never sends (the expected triggers stay
    // lapsed_7d's alone), and every documented metric then has series to check.
    let rules = format!("{LAPSED_ONLY}\n{SHADOW_EXPERIMENT}");
    let config = write_config_with(
        dir.path(),
        &broker.address,
        "activity",
        "triggers",
        "rekindle-e2e",
        &WorkerOptions {
            rules: &rules,
            ..WorkerOptions::default()
        },
    );
    let worker = Worker::start(&config, &dir.path().join("worker.log"));
    let mut reader = TriggerReader::new(&broker.address, "triggers");
    reader.read_until(Duration::from_secs(180), |d| d.len() >= expected.len());
    // Anything beyond the expected set would show up now.
    reader.read_for(Duration::from_secs(3));
    check_http_endpoints(&config);
    let log = worker.log();
    let status = worker.stop();
    assert!(status.success(), "worker exited with {status}");

    let got: BTreeSet<_> = reader.delivered.iter().map(|d| d.episode()).collect();
    assert_same_episodes(&expected, &got);
    assert_eq!(
        reader.delivered.len(),
        expected.len(),
        "no trigger delivered twice in a clean run"
    );
    for d in &reader.delivered {
        assert_eq!(d.rule_id, "lapsed_7d");
        assert_eq!(
            d.key.as_deref(),
            Some(d.user_id.as_str()),
            "keyed by user_id"
        );
        assert!(d.fired_at_ms >= d.due_at_ms, "fired before due: {d:?}");
    }

    let stopped = log_lines(&log, "worker stopped");
    assert_eq!(stopped.len(), 1, "one clean stop logged");
    assert_eq!(stopped[0]["malformed"], 25, "{:?}", stopped[0]);
    let dead = read_topic(
        &broker.address,
        DEAD_LETTERS,
        Duration::from_secs(30),
        |r| r.len() >= 25,
    );
    assert_eq!(dead.len(), 25, "every malformed record is dead-lettered");
    let warnings = log_lines(&log, "malformed record skipped");
    assert_eq!(warnings.len(), 25);
    for w in &warnings {
        assert_eq!(w["topic"], "activity");
        assert!(w["partition"].is_u64() && w["offset"].is_u64(), "{w}");
    }

    let replay_input = dir.path().join("histories.jsonl");
    write_replay_file(&replay_input, &events);
    let replayed = replayed_trigger_ids(Some(&config), &replay_input, until);
    let live = reader.trigger_ids();
    assert_eq!(replayed.len(), expected.len());
    assert_eq!(
        replayed, live,
        "replay and the live run agree on trigger ids"
    );
}

/// Health endpoints answer, and every metric named in docs/instrumentation.md is exported.
fn check_http_endpoints(config: &std::path::Path) {
    assert_eq!(http_get(config, "/health/livez").0, 200);
    let (status, body) = http_get(config, "/health/readyz");
    assert_eq!(status, 200, "ready after processing: {body}");
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/instrumentation.md"),
    )
    .expect("docs/instrumentation.md");
    let documented: BTreeSet<String> = doc
        .split('`')
        .filter(|w| {
            w.starts_with("rekindle_") && w.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
        .map(str::to_string)
        .collect();
    assert!(
        documented.len() >= 20,
        "the instrumentation spec names its metrics"
    );
    // Some series appear with periodic samples (librdkafka statistics): allow them a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (exposition, exported) = loop {
        let (status, exposition) = http_get(config, "/metrics");
        assert_eq!(status, 200);
        let exported: BTreeSet<String> = exposition
            .lines()
            .filter(|l| l.starts_with("# TYPE "))
            .filter_map(|l| l.split_whitespace().nth(2))
            .map(str::to_string)
            .collect();
        if documented.is_subset(&exported) || std::time::Instant::now() > deadline {
            break (exposition, exported);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let missing: Vec<_> = documented.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "documented but not exported: {missing:?}"
    );
    let undocumented: Vec<_> = exported.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "exported but not documented: {undocumented:?}"
    );
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        assert!(name.starts_with("rekindle_"), "unexpected series {line}");
    }
    assert!(
        exposition.contains("rekindle_ingest_records_malformed_total{error=\"avro\"}"),
        "{exposition}"
    );
    assert!(exposition.contains("rekindle_rules_triggers_fired_total{rule=\"lapsed_7d\"}"));
}
