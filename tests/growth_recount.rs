//! Growth figures against an independent recount.
//!
//! 50,000 users over 90 days (habits of varying strength, users joining throughout, some
//! lapsing, a few events arriving days late) go through a live worker on a real broker and
//! through `rekindle replay`. The daily, weekly and monthly active users, the retention
//! cohorts and the users per RFM segment that `rekindle report` prints from each must equal
//! a brute-force recount from the raw events, done here with calendar dates in the reporting
//! zone (Asia/Kolkata, so that local days are not UTC days) and nothing of rekindle's day
//! arithmetic. The worker's own clock ticks are off: one tick per partition at a known time
//! ends the history, so the live run and the replay judge segments at the same moment.

use rekindle_suite::support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use rekindle_events::ActivityEvent;
use support::broker::{create_topic, produce, produce_ticks, Batching, Broker};
use support::histories::{avro_payloads, write_replay_file};
use support::worker::{
    http_get, rekindle_json, try_http_get, write_config_with, Worker, WorkerOptions, DEAD_LETTERS,
};
use support::{now_ms, Rng, DAY};

const USERS: u64 = 50_000;
const DAYS: i64 = 90;
const ZONE: &str = "Asia/Kolkata";

/// Rules stay at their defaults; only the reporting zone changes.
const ANALYTICS: &str = r#"
[analytics]
timezone = "Asia/Kolkata"
"#;

/// The history, in the order it is produced: time order, except that about one event in
/// fifty arrives one to three days late.
fn history(end_ms: i64) -> Vec<ActivityEvent> {
    let mut rng = Rng(20_261_123);
    let start = end_ms - DAYS * DAY;
    let mut timed: Vec<(i64, ActivityEvent)> = Vec::new();
    for user in 0..USERS {
        let first_day = rng.below(DAYS as u64 - 5) as i64;
        let habit = 0.04 + 0.3 * rng.unit();
        let lapse_from = if rng.unit() < 0.3 {
            first_day + 2 + rng.below(30) as i64
        } else {
            DAYS
        };
        for day in first_day..DAYS {
            let active = day == first_day || (day < lapse_from && rng.unit() < habit);
            if !active {
                continue;
            }
            let events = if rng.unit() < 0.1 { 2 } else { 1 };
            for _ in 0..events {
                // Whole amounts, so that sums are exact in any order.
                let amount = if rng.unit() < 0.05 {
                    [5.0, 30.0, 150.0, 600.0][rng.below(4) as usize]
                } else {
                    0.0
                };
                let ts = start + day * DAY + rng.below(DAY as u64) as i64;
                if ts >= end_ms {
                    continue;
                }
                let arrives = if rng.unit() < 0.02 {
                    ts + (1 + rng.below(3) as i64) * DAY
                } else {
                    ts
                };
                timed.push((
                    arrives,
                    ActivityEvent {
                        event_id: format!("e-{user}-{ts}"),
                        user_id: format!("u{user:06}"),
                        event_type: if amount > 0.0 { "purchase" } else { "app_open" }.into(),
                        timestamp_ms: ts,
                        session_seconds: 0,
                        amount,
                        timezone: None,
                        attributes: BTreeMap::new(),
                    },
                ));
            }
        }
    }
    timed.sort_by(|a, b| (a.0, &a.1.event_id).cmp(&(b.0, &b.1.event_id)));
    timed.into_iter().map(|(_, e)| e).collect()
}

/// The brute-force recount: every user's set of active local dates.
struct Recount {
    by_user: BTreeMap<String, BTreeSet<Date>>,
}

impl Recount {
    fn new(events: &[ActivityEvent]) -> Recount {
        let zone = TimeZone::get(ZONE).expect("zone");
        let mut by_user: BTreeMap<String, BTreeSet<Date>> = BTreeMap::new();
        for e in events {
            let date = Timestamp::from_millisecond(e.timestamp_ms)
                .expect("timestamp")
                .to_zoned(zone.clone())
                .date();
            by_user.entry(e.user_id.clone()).or_default().insert(date);
        }
        Recount { by_user }
    }

    /// Users active on a date within `days` days ending with `day`.
    fn active(&self, day: Date, days: i64) -> u64 {
        let from = day.checked_sub((days - 1).days()).expect("date");
        self.by_user
            .values()
            .filter(|dates| dates.range(from..=day).next().is_some())
            .count() as u64
    }

    fn first_day(&self) -> Date {
        self.by_user
            .values()
            .filter_map(|d| d.first())
            .min()
            .copied()
            .expect("events")
    }

    /// The `report active` lines from the first active day to `last`.
    fn active_lines(&self, last: Date) -> Vec<serde_json::Value> {
        let mut lines = Vec::new();
        let mut day = self.first_day();
        while day <= last {
            lines.push(serde_json::json!({
                "day": day.to_string(),
                "dau": self.active(day, 1),
                "wau": self.active(day, 7),
                "mau": self.active(day, 30),
            }));
            day = day.tomorrow().expect("date");
        }
        lines
    }

    /// The `report retention` lines (classic N-day counts) from the first cohort to `last`.
    fn retention_lines(&self, last: Date) -> Vec<serde_json::Value> {
        let mut cohorts: BTreeMap<Date, Vec<&BTreeSet<Date>>> = BTreeMap::new();
        for dates in self.by_user.values() {
            if let Some(first) = dates.first() {
                cohorts.entry(*first).or_default().push(dates);
            }
        }
        let mut lines = Vec::new();
        let mut cohort = self.first_day();
        while cohort <= last {
            let members = cohorts.get(&cohort).cloned().unwrap_or_default();
            let back = |k: i64| {
                let day = cohort.checked_add(k.days()).expect("date");
                if day > last {
                    serde_json::Value::Null
                } else {
                    let n = members.iter().filter(|d| d.contains(&day)).count();
                    serde_json::json!(n)
                }
            };
            lines.push(serde_json::json!({
                "cohort": cohort.to_string(),
                "users": members.len(),
                "d1": back(1),
                "d7": back(7),
                "d30": back(30),
            }));
            cohort = cohort.tomorrow().expect("date");
        }
        lines
    }
}

/// `rekindle --config CONFIG report REPORT --format json ARGS...`, parsed.
fn report(config: &Path, report: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["report", report, "--format", "json"];
    all.extend_from_slice(args);
    rekindle_json(Some(config), &all)
}

/// Only the fields the recount knows (the report adds rolling retention).
fn classic(lines: &[serde_json::Value]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .map(|l| {
            serde_json::json!({
                "cohort": l["cohort"], "users": l["users"],
                "d1": l["d1"], "d7": l["d7"], "d30": l["d30"],
            })
        })
        .collect()
}

fn assert_lines_equal(what: &str, got: &[serde_json::Value], want: &[serde_json::Value]) {
    assert_eq!(got.len(), want.len(), "{what}: number of lines");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g, w, "{what}");
    }
}

/// Sum of a counter over its series, from the worker's /metrics (0 before it listens).
fn counter_sum(config: &Path, name: &str) -> u64 {
    let Some((_, body)) = try_http_get(config, "/metrics") else {
        return 0;
    };
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Lowest and highest score of a range.
type Scores = (u8, u8);

/// The documented default segment table: name, then R, F and M score ranges.
const SEGMENT_MAP: [(&str, Scores, Scores, Scores); 8] = [
    ("champions", (4, 5), (4, 5), (1, 5)),
    ("loyal", (3, 5), (3, 5), (1, 5)),
    ("new", (4, 5), (1, 1), (1, 5)),
    ("potential", (3, 5), (1, 2), (1, 5)),
    ("cant_lose", (1, 2), (4, 5), (4, 5)),
    ("at_risk", (1, 2), (3, 5), (1, 5)),
    ("hibernating", (2, 2), (1, 2), (1, 5)),
    ("lost", (1, 1), (1, 2), (1, 5)),
];

/// Users per segment at `at_ms` under the default `[segments]`, from the raw events: R from
/// the time since the last event (R drops at 2, 4, 8 and 15 days), F from distinct UTC days with
/// events among the 30 ending with `at_ms`'s (2, 4, 8, 15), M from their amounts (1, 20,
/// 100, 500).
fn segment_lines(events: &[ActivityEvent], at_ms: i64) -> Vec<serde_json::Value> {
    let mut users: BTreeMap<&str, (i64, BTreeMap<i64, f64>)> = BTreeMap::new();
    for e in events {
        let user = users
            .entry(e.user_id.as_str())
            .or_insert((i64::MIN, BTreeMap::new()));
        user.0 = user.0.max(e.timestamp_ms);
        *user.1.entry(e.timestamp_ms.div_euclid(DAY)).or_default() += e.amount;
    }
    let today = at_ms.div_euclid(DAY);
    let mut counts: BTreeMap<&str, u64> = SEGMENT_MAP.iter().map(|s| (s.0, 0)).collect();
    for (last, days) in users.values() {
        let silent = at_ms - last;
        let r = 5 - [2, 4, 8, 15].iter().filter(|t| silent >= **t * DAY).count() as u8;
        let recent: Vec<f64> = days.range(today - 29..=today).map(|(_, a)| *a).collect();
        let f = 1 + [2, 4, 8, 15].iter().filter(|t| recent.len() >= **t).count() as u8;
        let spent: f64 = recent.iter().sum();
        let m = 1 + [1.0, 20.0, 100.0, 500.0]
            .iter()
            .filter(|t| spent >= **t)
            .count() as u8;
        let within = |(lo, hi): (u8, u8), v: u8| lo <= v && v <= hi;
        let (name, ..) = SEGMENT_MAP
            .iter()
            .find(|(_, rr, fr, mr)| within(*rr, r) && within(*fr, f) && within(*mr, m))
            .expect("the default map covers every score");
        *counts.get_mut(name).expect("known") += 1;
    }
    SEGMENT_MAP
        .iter()
        .map(|(name, ..)| serde_json::json!({"segment": name, "users": counts[name]}))
        .collect()
}

/// The day before `at_ms`'s day in the reporting zone: the last complete one at that clock.
fn last_complete_day(at_ms: i64) -> Date {
    Timestamp::from_millisecond(at_ms)
        .expect("time")
        .to_zoned(TimeZone::get(ZONE).expect("zone"))
        .date()
        .yesterday()
        .expect("date")
}

/// The three reports, from `source` (`--state-dir DIR` or `--input FILE --until-ms T`),
/// against the recount.
fn check_reports(
    what: &str,
    config: &Path,
    source: &[&str],
    recount: &Recount,
    events: &[ActivityEvent],
    clock: i64,
) {
    let last = last_complete_day(clock);
    let active = report(config, "active", source);
    assert_lines_equal(
        &format!("{what} active"),
        &active,
        &recount.active_lines(last),
    );
    let retention = report(config, "retention", source);
    assert_lines_equal(
        &format!("{what} retention"),
        &classic(&retention),
        &recount.retention_lines(last),
    );
    let segments = report(config, "segments", source);
    assert_lines_equal(
        &format!("{what} segments"),
        &segments,
        &segment_lines(events, clock),
    );
    let users: u64 = segments
        .iter()
        .map(|l| l["users"].as_u64().expect("users"))
        .sum();
    assert_eq!(users, USERS, "{what}: every user is in exactly one segment");
}

#[test]
fn reported_growth_figures_equal_a_recount_live_and_in_replay() {
    // The end of the history, and the clock of both runs.
    let clock = now_ms();
    let events = history(clock - DAY);
    assert!(events.len() > 300_000, "{} events", events.len());
    let recount = Recount::new(&events);
    assert_eq!(recount.by_user.len() as u64, USERS);

    // Live: a worker with four partitions on a real broker.
    let broker = Broker::start();
    create_topic(&broker.address, "activity", 4);
    create_topic(&broker.address, "triggers", 2);
    create_topic(&broker.address, DEAD_LETTERS, 1);
    produce(
        &broker.address,
        "activity",
        &avro_payloads(&events),
        Batching::Default,
    );
    produce_ticks(&broker.address, "activity", 4, clock);
    let dir = tempfile::tempdir().expect("temp dir");
    let rules = format!("{}\n{ANALYTICS}", support::worker::LAPSED_ONLY);
    let config = write_config_with(
        dir.path(),
        &broker.address,
        "activity",
        "triggers",
        "rekindle-growth",
        &WorkerOptions {
            rules: &rules,
            tick_interval: "0s",
            ..WorkerOptions::default()
        },
    );
    let worker = Worker::start(&config, &dir.path().join("worker.log"));
    let deadline = Instant::now() + Duration::from_secs(600);
    while counter_sum(&config, "rekindle_ingest_events_processed_total") < events.len() as u64
        || counter_sum(&config, "rekindle_clock_ticks_processed_total") < 4
    {
        assert!(
            Instant::now() < deadline,
            "the worker did not process the history"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let (_, metrics) = http_get(&config, "/metrics");
    for series in [
        "rekindle_growth_active_users{partition=\"0\",window=\"30d\"}",
        "rekindle_growth_segment_users{partition=\"3\",segment=\"champions\"}",
    ] {
        assert!(metrics.contains(series), "{series} is exported");
    }
    let status = worker.stop();
    assert!(status.success(), "worker exited with {status}");
    let state = dir.path().join("state").display().to_string();
    check_reports(
        "live",
        &config,
        &["--state-dir", &state],
        &recount,
        &events,
        clock,
    );

    // Replay: the same events from a file, the clock moved to the same time at the end.
    let input = dir.path().join("history.jsonl");
    write_replay_file(&input, &events);
    let input = input.display().to_string();
    let until = clock.to_string();
    check_reports(
        "replay",
        &config,
        &["--input", &input, "--until-ms", &until],
        &recount,
        &events,
        clock,
    );
}
