//! Experiments with a planted effect.
//!
//! 30,000 users are active on three days and then go quiet, so `lapsed_7d` fires for each of
//! them, in one of three arms (`push_reminder` 45 %, `coupon` 45 %, `holdout` 10 %). A first
//! replay tells which user got which arm; the test then plants returns within the
//! attribution window with a chosen probability per arm and replays the whole history with
//! `rekindle report lift` (the replay files carry a clock tick every hour, as a live
//! partition does, so triggers fire within the hour they are due). The report must count
//! exactly the users triggered and the returns planted per arm, find the planted lift (30 % against 20 %) with the right sign and call it
//! significant, and call an arm with no effect (20 % against 20 %) not significant; with no
//! effect anywhere, nothing is significant.

use rekindle_suite::support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use rekindle_events::ActivityEvent;
use support::worker::rekindle_json;
use support::{Rng, DAY};

const USERS: u64 = 30_000;
/// 2026-01-01T00:00:00Z
const T0: i64 = 1_767_225_600_000;
const END: i64 = T0 + 60 * DAY;

const CONFIG: &str = r#"
[rules.lapsed_7d]
cooldown = "0s"
experiment = "winback-2026"
arms = [
  { name = "push_reminder", percent = 45.0 },
  { name = "coupon", percent = 45.0 },
  { name = "holdout", percent = 10.0, holdout = true },
]
[rules.engagement_drop]
mode = "off"
[rules.new_user_no_return]
mode = "off"
[rules.dormant_30d]
mode = "off"
[policy.frequency_cap]
max_triggers = 0
"#;

fn event(user: &str, ts: i64, serial: &mut u64) -> ActivityEvent {
    *serial += 1;
    ActivityEvent {
        event_id: format!("e{serial}"),
        user_id: user.into(),
        event_type: "app_open".into(),
        timestamp_ms: ts,
        session_seconds: 0,
        amount: 0.0,
        timezone: None,
        attributes: BTreeMap::new(),
    }
}

/// Every user active on three consecutive days starting within the first three weeks.
fn engaged_then_quiet(rng: &mut Rng, serial: &mut u64) -> Vec<ActivityEvent> {
    let mut events = Vec::new();
    for user in 0..USERS {
        let first = rng.below(21) as i64;
        for day in first..first + 3 {
            let ts = T0 + day * DAY + rng.below(DAY as u64) as i64;
            events.push(event(&format!("u{user:05}"), ts, serial));
        }
    }
    events.sort_by_key(|e| e.timestamp_ms);
    events
}

/// The replay file: the events with a clock tick every hour, as a live worker's partition
/// has, so that every trigger fires within the hour after it is due.
fn write_replay_file(path: &Path, events: &[ActivityEvent]) {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("replay file"));
    let mut next_tick = T0;
    for e in events {
        while next_tick <= e.timestamp_ms {
            writeln!(out, "{{\"tick_ms\": {next_tick}}}").expect("write");
            next_tick += 3_600_000;
        }
        serde_json::to_writer(&mut out, e).expect("json");
        out.write_all(b"\n").expect("write");
    }
    while next_tick <= END {
        writeln!(out, "{{\"tick_ms\": {next_tick}}}").expect("write");
        next_tick += 3_600_000;
    }
    out.flush().expect("flush");
}

fn rekindle(config: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    rekindle_json(Some(config), args)
}

/// The first trigger decided per user: (arm, fired at), read from triggers and audit
/// records (the holdout arm's are recorded, not sent).
fn arms_by_user(decisions: &[serde_json::Value]) -> BTreeMap<String, (String, i64)> {
    let mut by_user = BTreeMap::new();
    for d in decisions {
        let trigger = if d.get("trigger").is_some() {
            &d["trigger"]
        } else {
            d
        };
        let user = trigger["user_id"].as_str().expect("user_id").to_string();
        let arm = trigger["arm"].as_str().expect("arm").to_string();
        let fired = trigger["fired_at_ms"].as_i64().expect("fired_at_ms");
        by_user.entry(user).or_insert((arm, fired));
    }
    by_user
}

/// Report lines by arm, after checking the counts against what was triggered and planted.
fn lift_by_arm(
    dir: &Path,
    config: &Path,
    base: &[ActivityEvent],
    chances: &[(&str, f64)],
    seed: u64,
) -> BTreeMap<String, serde_json::Value> {
    let input = dir.join("base.jsonl");
    write_replay_file(&input, base);
    let input = input.display().to_string();
    let until = END.to_string();
    let first = rekindle(
        config,
        &["replay", "--audit", "--input", &input, "--until-ms", &until],
    );
    let arms = arms_by_user(&first);
    assert_eq!(arms.len() as u64, USERS, "every user lapsed once");

    // Plant returns: 1 hour to 5 days after the trigger, inside the 7-day window.
    let mut rng = Rng(seed);
    let mut events = base.to_vec();
    let mut serial = 10_000_000;
    let mut planted: BTreeMap<&str, u64> = BTreeMap::new();
    let mut users: BTreeMap<&str, u64> = BTreeMap::new();
    for (user, (arm, fired)) in &arms {
        let chance = chances
            .iter()
            .find(|(name, _)| name == arm)
            .map(|(_, p)| *p)
            .expect("a configured arm");
        *users.entry(arm.as_str()).or_default() += 1;
        if rng.unit() < chance {
            let back = fired + 3_600_000 + rng.below(4 * DAY as u64) as i64;
            events.push(event(user, back, &mut serial));
            *planted.entry(arm.as_str()).or_default() += 1;
        }
    }
    events.sort_by_key(|e| e.timestamp_ms);
    let input = dir.join("with-returns.jsonl");
    write_replay_file(&input, &events);
    let input = input.display().to_string();
    let lines = rekindle(
        config,
        &[
            "report",
            "lift",
            "--format",
            "json",
            "--input",
            &input,
            "--until-ms",
            &until,
        ],
    );
    let by_arm: BTreeMap<String, serde_json::Value> = lines
        .into_iter()
        .map(|l| (l["arm"].as_str().expect("arm").to_string(), l))
        .collect();
    let names: BTreeSet<&str> = by_arm.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from(["coupon", "holdout", "push_reminder"])
    );
    for (arm, line) in &by_arm {
        assert_eq!(line["rule"], "lapsed_7d");
        assert_eq!(line["experiment"], "winback-2026");
        assert_eq!(line["users"], users[arm.as_str()], "{arm}: users triggered");
        assert_eq!(
            line["reactivated"],
            planted.get(arm.as_str()).copied().unwrap_or(0),
            "{arm}: every planted return, nothing else"
        );
    }
    by_arm
}

fn write_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("experiment.toml");
    std::fs::write(&path, CONFIG).expect("config");
    path
}

#[test]
fn the_lift_report_finds_a_planted_effect_and_nothing_where_there_is_none() {
    let dir = tempfile::tempdir().expect("dir");
    let config = write_config(dir.path());
    let mut rng = Rng(7);
    let mut serial = 0;
    let base = engaged_then_quiet(&mut rng, &mut serial);

    let planted = lift_by_arm(
        dir.path(),
        &config,
        &base,
        &[("push_reminder", 0.30), ("coupon", 0.20), ("holdout", 0.20)],
        11,
    );
    let push = &planted["push_reminder"];
    let lift = push["lift"].as_f64().expect("lift");
    assert!((0.07..0.13).contains(&lift), "planted +10 points: {push}");
    assert!(push["ci_low"].as_f64().expect("low") > 0.0, "{push}");
    assert_eq!(push["significant"], true, "{push}");
    assert_eq!(
        planted["coupon"]["significant"], false,
        "{}",
        planted["coupon"]
    );
    let holdout = &planted["holdout"];
    assert_eq!(holdout["holdout"], true);
    assert!(holdout["lift"].is_null() && holdout["significant"].is_null());

    let none = lift_by_arm(
        dir.path(),
        &config,
        &base,
        &[("push_reminder", 0.20), ("coupon", 0.20), ("holdout", 0.20)],
        12,
    );
    for arm in ["push_reminder", "coupon"] {
        let line = &none[arm];
        assert_eq!(line["significant"], false, "{line}");
        let (low, high) = (
            line["ci_low"].as_f64().expect("low"),
            line["ci_high"].as_f64().expect("high"),
        );
        assert!(low < 0.0 && high > 0.0, "{line}");
    }
}

#[test]
fn the_arm_is_in_every_trigger_and_audit_record_and_the_holdout_arm_is_never_sent() {
    let dir = tempfile::tempdir().expect("dir");
    let config = write_config(dir.path());
    let mut rng = Rng(3);
    let mut serial = 0;
    let base = engaged_then_quiet(&mut rng, &mut serial);
    let input = dir.path().join("base.jsonl");
    let first_users: Vec<ActivityEvent> = base
        .iter()
        .filter(|e| e.user_id.as_str() < "u01000")
        .cloned()
        .collect();
    write_replay_file(&input, &first_users);
    let input = input.display().to_string();
    let until = END.to_string();
    let triggers = rekindle(
        &config,
        &["replay", "--input", &input, "--until-ms", &until],
    );
    assert!(triggers.len() > 500, "{}", triggers.len());
    for t in &triggers {
        let arm = t["arm"].as_str().expect("arm");
        assert!(["push_reminder", "coupon"].contains(&arm), "{t}");
    }
    let all = rekindle(
        &config,
        &["replay", "--audit", "--input", &input, "--until-ms", &until],
    );
    let held: Vec<_> = all.iter().filter(|d| d.get("trigger").is_some()).collect();
    assert!(!held.is_empty());
    for d in held {
        assert_eq!(d["trigger"]["arm"], "holdout", "{d}");
        assert_eq!(d["reason"], "holdout", "{d}");
    }
}
