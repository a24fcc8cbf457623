//! The scenario suite of tests/fixtures/scenarios: each scenario's hand-computed decisions
//! come out of `rekindle replay`, and a live worker against a real broker produces exactly
//! the same trigger and audit records from the same log.

use rekindle_suite::support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rekindle_events::{encode_event, ActivityEvent, AuditDecoder, TriggerDecoder};
use serde_json::Value;
use support::broker::{create_topic, produce_log, Batching, Broker, LogRecord, TICK_HEADER};
use support::worker::{
    http_get, read_topic, run_rekindle, write_config_with, Worker, WorkerOptions, DEAD_LETTERS,
};

/// Built-in rule ids, turned off unless a scenario names them.
const BUILT_IN_RULES: [&str; 4] = [
    "lapsed_7d",
    "engagement_drop",
    "new_user_no_return",
    "dormant_30d",
];

struct Scenario {
    name: String,
    events: Vec<LogLine>,
    expect: Vec<Expected>,
    /// Exposition lines the live worker's /metrics must contain at the end.
    metrics: Vec<String>,
    /// The scenario's rules, lifecycle and policy as configuration tables.
    rules_toml: String,
}

enum LogLine {
    Event(Box<ActivityEvent>),
    Tick(i64),
}

#[derive(Debug)]
struct Expected {
    line: String,
    key: DecisionKey,
    checks: Vec<(String, String)>,
}

/// (fired_at, rule, user, outcome): how decisions are matched to expectations.
type DecisionKey = (i64, String, String, String);

fn millis(text: &str) -> i64 {
    let t: jiff::Timestamp = text
        .parse()
        .unwrap_or_else(|e| panic!("{text:?} is not an RFC 3339 time: {e}"));
    t.as_millisecond()
}

fn scenario_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/scenarios")
}

fn load_scenarios() -> Vec<Scenario> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(scenario_dir())
        .expect("fixtures directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 10, "the suite covers every rule and policy");
    paths.iter().map(|p| load(p)).collect()
}

fn load(path: &Path) -> Scenario {
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("name")
        .to_string();
    let text = std::fs::read_to_string(path).expect("scenario file");
    let table: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("{name}: not TOML: {e}"));
    let string = |key: &str| {
        table
            .get(key)
            .and_then(toml::Value::as_str)
            .unwrap_or_else(|| panic!("{name}: `{key}` is missing"))
            .to_string()
    };
    assert!(!string("description").is_empty());
    let events = string("events")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| parse_event(&name, i, l))
        .collect();
    let expect = string("expect")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(parse_expected)
        .collect();
    let metrics = table
        .get("metrics")
        .and_then(toml::Value::as_str)
        .map(|m| {
            m.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let mut config = toml::Table::new();
    let mut rules = table
        .get("rules")
        .and_then(toml::Value::as_table)
        .cloned()
        .unwrap_or_default();
    for id in BUILT_IN_RULES {
        if !rules.contains_key(id) {
            let mut off = toml::Table::new();
            off.insert("mode".into(), "off".into());
            rules.insert(id.into(), off.into());
        }
    }
    config.insert("rules".into(), rules.into());
    let mut policy = table
        .get("policy")
        .and_then(toml::Value::as_table)
        .cloned()
        .unwrap_or_default();
    if !policy.contains_key("frequency_cap") {
        let mut cap = toml::Table::new();
        cap.insert("max_triggers".into(), 0.into());
        policy.insert("frequency_cap".into(), cap.into());
    }
    config.insert("policy".into(), policy.into());
    if let Some(lifecycle) = table.get("lifecycle") {
        config.insert("lifecycle".into(), lifecycle.clone());
    }
    Scenario {
        name,
        events,
        expect,
        metrics,
        rules_toml: toml::to_string(&config).expect("serialises"),
    }
}

fn parse_event(name: &str, serial: usize, line: &str) -> LogLine {
    let words: Vec<&str> = line.split_whitespace().collect();
    if words[0] == "tick" {
        return LogLine::Tick(millis(words[1]));
    }
    let [time, user, event_type, extra @ ..] = words.as_slice() else {
        panic!("{name}: bad event line {line:?}")
    };
    let mut event = ActivityEvent {
        event_id: format!("{name}-{serial}"),
        user_id: user.to_string(),
        event_type: event_type.to_string(),
        timestamp_ms: millis(time),
        session_seconds: 0,
        amount: 0.0,
        timezone: None,
        attributes: BTreeMap::new(),
    };
    for word in extra {
        match word.split_once('=') {
            Some(("session", v)) => event.session_seconds = v.parse().expect("seconds"),
            Some(("amount", v)) => event.amount = v.parse().expect("amount"),
            Some(("tz", v)) => event.timezone = Some(v.to_string()),
            _ => panic!("{name}: unknown event field {word:?}"),
        }
    }
    LogLine::Event(Box::new(event))
}

fn parse_expected(line: &str) -> Expected {
    let words: Vec<&str> = line.split_whitespace().collect();
    let [fired_at, rule, user, outcome, checks @ ..] = words.as_slice() else {
        panic!("bad expectation {line:?}")
    };
    Expected {
        line: line.to_string(),
        key: (
            millis(fired_at),
            rule.to_string(),
            user.to_string(),
            outcome.to_string(),
        ),
        checks: checks
            .iter()
            .map(|c| {
                let (k, v) = c.split_once('=').expect("key=value");
                (k.to_string(), v.to_string())
            })
            .collect(),
    }
}

/// A decision record as `replay --audit` prints it: a trigger, or an audit record.
fn key_of(record: &Value) -> DecisionKey {
    let trigger = record.get("trigger").unwrap_or(record);
    let outcome = match record.get("decision") {
        Some(decision) => format!(
            "{}:{}",
            decision.as_str().expect("decision"),
            record["reason"].as_str().expect("reason")
        ),
        None => "sent".to_string(),
    };
    (
        trigger["fired_at_ms"].as_i64().expect("fired_at_ms"),
        trigger["rule_id"].as_str().expect("rule_id").to_string(),
        trigger["user_id"].as_str().expect("user_id").to_string(),
        outcome,
    )
}

/// Every expected decision happened, nothing else did, and each one's named fields hold.
fn assert_expected(scenario: &Scenario, records: &[Value]) {
    let mut got: Vec<(DecisionKey, &Value)> = records.iter().map(|r| (key_of(r), r)).collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want: Vec<&Expected> = scenario.expect.iter().collect();
    want.sort_by(|a, b| a.key.cmp(&b.key));
    let got_keys: Vec<&DecisionKey> = got.iter().map(|(k, _)| k).collect();
    let want_keys: Vec<&DecisionKey> = want.iter().map(|e| &e.key).collect();
    assert_eq!(
        got_keys, want_keys,
        "{}: decisions differ from the expected ones",
        scenario.name
    );
    for ((_, record), expected) in got.iter().zip(&want) {
        let trigger = record.get("trigger").unwrap_or(record);
        for (field, value) in &expected.checks {
            let ok = match field.as_str() {
                "due" => trigger["due_at_ms"].as_i64() == Some(millis(value)),
                "release" => record["release_at_ms"].as_i64() == Some(millis(value)),
                "stage" => trigger["lifecycle_stage"].as_str() == Some(value.as_str()),
                feature => {
                    let want: f64 = value.parse().expect("a number");
                    trigger["features"][feature]
                        .as_f64()
                        .is_some_and(|got| (got - want).abs() <= 1e-9 * want.abs().max(1.0))
                }
            };
            assert!(
                ok,
                "{}: `{field}={value}` does not hold for {record} (expected line: {})",
                scenario.name, expected.line
            );
        }
    }
}

fn replay_lines(events: &[LogLine]) -> String {
    let mut out = String::new();
    for line in events {
        let json = match line {
            LogLine::Tick(t) => serde_json::json!({ "tick_ms": t }),
            LogLine::Event(e) => serde_json::to_value(e).expect("event JSON"),
        };
        out.push_str(&json.to_string());
        out.push('\n');
    }
    out
}

fn write_rules_config(dir: &Path, scenario: &Scenario) -> PathBuf {
    let path = dir.join(format!("{}.toml", scenario.name));
    std::fs::write(&path, &scenario.rules_toml).expect("config");
    path
}

/// `rekindle replay --audit` over the scenario: triggers and audit records, as JSON.
fn replay(dir: &Path, scenario: &Scenario) -> (Vec<Value>, Vec<Value>) {
    replay_keeping_state(dir, scenario, None)
}

fn replay_keeping_state(
    dir: &Path,
    scenario: &Scenario,
    state_dir: Option<&Path>,
) -> (Vec<Value>, Vec<Value>) {
    let config = write_rules_config(dir, scenario);
    let input = dir.join(format!("{}.jsonl", scenario.name));
    std::fs::write(&input, replay_lines(&scenario.events)).expect("replay input");
    let mut args = vec![
        "--config",
        config.to_str().expect("utf-8"),
        "replay",
        "--input",
        input.to_str().expect("utf-8"),
        "--audit",
    ];
    if let Some(state) = state_dir {
        args.extend(["--state-dir", state.to_str().expect("utf-8")]);
    }
    let output = run_rekindle(&args);
    assert!(
        output.status.success(),
        "{}: replay failed: {}",
        scenario.name,
        String::from_utf8_lossy(&output.stderr)
    );
    let records: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    records
        .into_iter()
        .partition(|r| r.get("decision").is_none())
}

#[test]
fn every_scenario_replays_to_its_expected_decisions() {
    let dir = tempfile::tempdir().expect("dir");
    for scenario in load_scenarios() {
        let (triggers, audit) = replay(dir.path(), &scenario);
        let all: Vec<Value> = triggers.into_iter().chain(audit).collect();
        assert_expected(&scenario, &all);
        eprintln!("{}: {} decisions as expected", scenario.name, all.len());
    }
}

#[test]
fn inspect_shows_a_users_state_timers_and_recent_decisions() {
    let dir = tempfile::tempdir().expect("dir");
    let scenario = load(&scenario_dir().join("cooldown.toml"));
    let state = dir.path().join("state");
    replay_keeping_state(dir.path(), &scenario, Some(&state));
    let config = write_rules_config(dir.path(), &scenario);
    let inspect = |user: &str| {
        run_rekindle(&[
            "--config",
            config.to_str().expect("utf-8"),
            "inspect",
            "--user",
            user,
            "--state-dir",
            state.to_str().expect("utf-8"),
        ])
    };
    let output = inspect("leo");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("inspect prints JSON");
    let outcomes: Vec<&str> = report["recent_decisions"]
        .as_array()
        .expect("decisions")
        .iter()
        .map(|d| d["outcome"].as_str().expect("outcome"))
        .collect();
    assert_eq!(outcomes, ["sent", "suppressed:cooldown", "sent"]);
    // leo was last active 03-26 10:00 and the clock is at 04-03: silent 7.6 days.
    assert_eq!(report["lifecycle_stage"], "at_risk");
    assert_eq!(report["last_active"], "2024-03-26T10:00:00Z");
    assert_eq!(report["pipeline_clock"], "2024-04-03T00:00:00Z");
    // Active on 03-11, 03-25 and 03-26 of the 30 days ending 04-03, nothing spent: R 3 (7 days
    // silent), F 2, M 1: potential. The next wake-up is when eight whole days have passed
    // (R 2: hibernating), before the stage change to dormant on 04-25.
    assert_eq!(report["segment"]["segment"], "potential");
    assert_eq!(report["segment"]["r"], 3);
    assert_eq!(report["timer"], "2024-04-03T10:00:00Z");
    assert_eq!(report["rules"][0]["last_sent"], "2024-04-03T00:00:00Z");
    let missing = inspect("nobody");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no state for user"));
}

#[test]
fn a_live_worker_produces_the_same_records_as_replay() {
    let broker = Broker::start();
    create_topic(&broker.address, DEAD_LETTERS, 1);
    let dir = tempfile::tempdir().expect("dir");
    let triggers_decoder = TriggerDecoder::new().expect("decoder");
    let audit_decoder = AuditDecoder::new().expect("decoder");
    for scenario in load_scenarios() {
        let (want_triggers, want_audit) = replay(dir.path(), &scenario);
        let name = &scenario.name;
        let (activity, triggers, audit) = (
            format!("{name}.activity"),
            format!("{name}.triggers"),
            format!("{name}.audit"),
        );
        // One partition: the log, and so the clock, is the replay file's.
        create_topic(&broker.address, &activity, 1);
        create_topic(&broker.address, &triggers, 1);
        create_topic(&broker.address, &audit, 1);
        let records: Vec<LogRecord> = scenario
            .events
            .iter()
            .map(|line| match line {
                LogLine::Event(e) => LogRecord {
                    key: e.user_id.clone(),
                    payload: encode_event(e, None).expect("avro"),
                    headers: Vec::new(),
                },
                LogLine::Tick(t) => LogRecord {
                    key: "tick".into(),
                    payload: t.to_be_bytes().to_vec(),
                    headers: vec![(TICK_HEADER, b"1".to_vec())],
                },
            })
            .collect();
        produce_log(&broker.address, &activity, &records, Batching::Default);
        let worker_dir = dir.path().join(name);
        std::fs::create_dir_all(&worker_dir).expect("worker dir");
        let rules = scenario.rules_toml.clone();
        let config = write_config_with(
            &worker_dir,
            &broker.address,
            &activity,
            &triggers,
            &format!("{name}-group"),
            &WorkerOptions {
                // No wall-clock ticks: the clock moves only with the log, as in replay.
                tick_interval: "0s",
                rules: &rules,
                audit_topic: Some(&audit),
                ..WorkerOptions::default()
            },
        );
        let worker = Worker::start(&config, &worker_dir.join("worker.log"));
        let decode_all = |topic: &str, want: usize, audit_records: bool, wait: Duration| {
            read_topic(&broker.address, topic, wait, |r| r.len() >= want)
                .iter()
                .map(|r| {
                    if audit_records {
                        serde_json::to_value(
                            audit_decoder.decode(&r.payload).expect("audit record"),
                        )
                    } else {
                        serde_json::to_value(triggers_decoder.decode(&r.payload).expect("trigger"))
                    }
                    .expect("JSON")
                })
                .collect::<Vec<Value>>()
        };
        let wait = Duration::from_secs(60);
        let got_triggers = decode_all(&triggers, want_triggers.len(), false, wait);
        let got_audit = decode_all(&audit, want_audit.len(), true, wait);
        // Nothing more arrives: read past the expected count for a while.
        let linger = Duration::from_millis(1500);
        let late_triggers = decode_all(&triggers, want_triggers.len() + 1, false, linger);
        let late_audit = decode_all(&audit, want_audit.len() + 1, true, linger);
        if !scenario.metrics.is_empty() {
            // Metrics reach /metrics at the batch's end; the outputs above came first.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let (_, exposition) = http_get(&config, "/metrics");
                let missing: Vec<&String> = scenario
                    .metrics
                    .iter()
                    .filter(|m| !exposition.lines().any(|l| l == m.as_str()))
                    .collect();
                if missing.is_empty() {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{name}: /metrics lacks {missing:?}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let status = worker.stop();
        assert!(status.success(), "{name}: worker exit {status:?}");
        assert_eq!(
            got_triggers, want_triggers,
            "{name}: live triggers differ from replay"
        );
        assert_eq!(
            got_audit, want_audit,
            "{name}: live audit records differ from replay"
        );
        assert_eq!(
            late_triggers.len(),
            want_triggers.len(),
            "{name}: extra triggers"
        );
        assert_eq!(
            late_audit.len(),
            want_audit.len(),
            "{name}: extra audit records"
        );
        let all: Vec<Value> = got_triggers.into_iter().chain(got_audit).collect();
        assert_expected(&scenario, &all);
        eprintln!("{name}: live and replay agree on {} records", all.len());
    }
}
