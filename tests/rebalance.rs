//! Three workers share a 12-partition topic; one is killed mid-stream and a new one with an
//! empty disk joins. Partitions move (cooperative-sticky), the joiner
//! rebuilds their state from the changelog, and the result is what `rekindle replay` gives
//! for the same events: the same trigger ids, and the same activity in every user's profile
//! (an event applied twice or lost in a move would show there). The test also checks, from
//! the workers' logs, that no partition ever had two owners at once. The same again with two
//! pipelines in each worker (`pipeline.threads = 2`): six members of the group in three
//! processes, partitions moving between the pipelines of one worker (sharing its state
//! directory) as well as between workers, and no two pipelines ever owning one partition.
//!
//! The group runs on librdkafka's mock cluster, whose group coordinator holds a rebalance
//! until every member has rejoined or timed out, as Kafka's does. tansu answers each
//! JoinGroup at once: the leader then assigns with the other members' metadata from their
//! previous join (their owned partitions as they were then), and hands out partitions that
//! other members still own and keep processing. Measured on tansu: six partitions with two
//! owners for up to 22 s in one run, and now and then triggers missing or extra.

use rekindle_suite::support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rekindle_rules::UserProfile;
use rekindle_state::Store;
use support::broker::{produce, Batching};
use support::histories::{avro_payloads, scripted, write_replay_file};
use support::worker::{
    log_lines, log_partitions, log_pipeline, rekindle_binary, write_config_with,
    write_lapsed_only_config, TriggerReader, Worker, WorkerOptions, ASSIGNED, DEAD_LETTERS,
    REVOKED,
};
use support::{now_ms, DAY};

const PARTITIONS: u32 = 12;

struct Member {
    dir: tempfile::TempDir,
    config: PathBuf,
    log: PathBuf,
}

const GROUP: &str = "rekindle-rebalance";

/// A member's directory and configuration; `kafka`: lines for its `[kafka]` section.
fn member(broker: &str, name: &str, kafka: &str) -> Member {
    let mut dir = tempfile::tempdir().expect("temp dir");
    dir.disable_cleanup(std::env::var_os("REKINDLE_TEST_KEEP").is_some());
    // The line deploy/long-tests.sh looks for, to show the directory on failure.
    eprintln!("worker directory: {} ({name})", dir.path().display());
    let config = write_config_with(
        dir.path(),
        broker,
        "activity",
        "triggers",
        GROUP,
        &WorkerOptions {
            kafka,
            ..WorkerOptions::default()
        },
    );
    let log = dir.path().join("worker.log");
    Member { dir, config, log }
}

/// The activity part of a profile: what a double-applied or lost event would change.
fn activity(p: &UserProfile) -> (i64, i64, Vec<(i64, u32, u64)>) {
    (
        p.first_active_ms,
        p.last_active_ms,
        p.buckets
            .iter()
            .map(|b| (b.index, b.events, b.session_seconds))
            .collect(),
    )
}

type Activity = (i64, i64, Vec<(i64, u32, u64)>);

/// Every user's activity from the stores of `dirs`, each partition taken from the store
/// that processed it furthest (other stores may hold an older copy of a moved partition).
fn live_activity(dirs: &[&Path]) -> BTreeMap<String, Activity> {
    let stores: Vec<Store> = dirs
        .iter()
        .map(|d| Store::open_read_only(&d.join("state")).expect("open state"))
        .collect();
    let mut users = BTreeMap::new();
    for partition in 0..PARTITIONS {
        let newest = stores
            .iter()
            .filter_map(|s| s.meta(partition).expect("meta").map(|m| (m.next_offset, s)))
            .max_by_key(|(next, _)| *next)
            .map(|(_, s)| s)
            .expect("some worker processed every partition");
        for (user, profile) in newest.profiles(partition).expect("profiles") {
            users.insert(user, activity(&profile));
        }
    }
    users
}

fn log_time(line: &serde_json::Value) -> jiff::Timestamp {
    line["timestamp"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("log timestamp")
}

/// The owner a log line speaks for: the worker, and its pipeline when it runs several.
fn log_owner(worker: &str, line: &serde_json::Value) -> String {
    match log_pipeline(line) {
        Some(n) => format!("{worker}/pipeline {n}"),
        None => worker.to_string(),
    }
}

/// Each partition's owners over time, from the workers' logs: (from, to, owner), an owner
/// being a worker or one of its pipelines. An owner holds a partition from the log line of
/// its assignment to that of its revocation, or to `ended` (its worker's kill) when the log
/// has none.
fn ownership(
    logs: &[(&str, &Path, Option<jiff::Timestamp>)],
) -> BTreeMap<u32, Vec<(jiff::Timestamp, jiff::Timestamp, String)>> {
    let mut owners: BTreeMap<u32, Vec<_>> = BTreeMap::new();
    for (name, log, ended) in logs {
        let mut changes: Vec<(jiff::Timestamp, bool, String, Vec<u32>)> = log_lines(log, ASSIGNED)
            .iter()
            .map(|l| (log_time(l), true, log_owner(name, l), log_partitions(l)))
            .chain(
                log_lines(log, REVOKED)
                    .iter()
                    .map(|l| (log_time(l), false, log_owner(name, l), log_partitions(l))),
            )
            .collect();
        changes.sort_by_key(|(at, _, _, _)| *at);
        let mut open: BTreeMap<(String, u32), jiff::Timestamp> = BTreeMap::new();
        for (at, assigned, owner, partitions) in changes {
            for p in partitions {
                if assigned {
                    open.entry((owner.clone(), p)).or_insert(at);
                } else if let Some(from) = open.remove(&(owner.clone(), p)) {
                    owners.entry(p).or_default().push((from, at, owner.clone()));
                }
            }
        }
        for ((owner, p), from) in open {
            let to = ended.expect("a running worker revokes its partitions when it stops");
            owners.entry(p).or_default().push((from, to, owner));
        }
    }
    owners
}

#[test]
fn a_killed_worker_and_an_empty_joiner_give_the_same_triggers_and_state_as_replay() {
    killed_worker_and_empty_joiner(1);
}

#[test]
fn a_killed_worker_and_an_empty_joiner_with_two_pipelines_each_give_the_same_triggers_and_state_as_replay(
) {
    killed_worker_and_empty_joiner(2);
}

/// A static member stopped mid-stream and restarted with two pipelines (the second joins
/// under its own id, `w1-1`): the group spreads the member's partitions over both, each
/// resumes its partitions from the state the first run left in the shared store, and the
/// triggers and profiles equal replay's, with no partition owned twice at once.
///
/// The mock cluster's coordinator gathers both pipelines into one assignment, so no
/// partition moves from one pipeline to the other while it runs; tansu's start-up does
/// that (see docs/performance.md, "Pipelines"), and the claims' unit tests cover the
/// hand-over.
#[test]
fn a_static_member_restarted_with_two_pipelines_resumes_every_partition_from_its_state() {
    let Setup {
        _mock,
        brokers,
        _reference,
        replay_state,
        expected,
    } = setup(13);

    let Member { dir, config, log } = member(&brokers, "w1", "group_instance_id = \"w1\"");
    let mut reader = TriggerReader::new(&brokers, "triggers");
    let one = Worker::start_with_env(&config, &log, &[("REKINDLE__PIPELINE__THREADS", "1")]);
    reader.read_until(Duration::from_secs(120), |d| d.len() >= expected.len() / 5);
    let status = one.stop();
    assert!(status.success(), "the first run exited with {status}");
    let at_restart = reader.trigger_ids().len();
    assert!(
        at_restart < expected.len() / 2,
        "the restart must come mid-stream"
    );
    let two = Worker::start_with_env(&config, &log, &[("REKINDLE__PIPELINE__THREADS", "2")]);
    reader.read_until_ids(Duration::from_secs(240), expected.len());
    reader.read_for(Duration::from_secs(3));
    let status = two.stop();
    assert!(status.success(), "the second run exited with {status}");

    assert_same_ids(&expected, &reader.trigger_ids());

    let owners = ownership(&[("w1", log.as_path(), None)]);
    let mut second_run: BTreeMap<String, usize> = BTreeMap::new();
    for spans in owners.values() {
        for (_, _, owner) in spans.iter().filter(|(_, _, o)| o.contains("pipeline")) {
            *second_run.entry(owner.clone()).or_default() += 1;
        }
    }
    assert_one_owner_at_a_time(owners);
    eprintln!("partitions per pipeline after the restart: {second_run:?}");
    assert_eq!(
        second_run.keys().map(String::as_str).collect::<Vec<_>>(),
        ["w1/pipeline 0", "w1/pipeline 1"],
        "both pipelines owned partitions"
    );
    let resumed: Vec<serde_json::Value> = log_lines(&log, ASSIGNED)
        .into_iter()
        .filter(|l| log_pipeline(l).is_some())
        .collect();
    for line in &resumed {
        let resume_at = line["resume_at"].as_str().unwrap_or_default();
        assert!(
            !resume_at.contains("None"),
            "a partition of the restarted worker started without state: {line}"
        );
    }

    assert_same_activity(&[dir.path()], &replay_state);
}

fn killed_worker_and_empty_joiner(threads: usize) {
    let threads = threads.to_string();
    let env = [("REKINDLE__PIPELINE__THREADS", threads.as_str())];
    let Setup {
        _mock,
        brokers,
        _reference,
        replay_state,
        expected,
    } = setup(12);
    assert!(expected.len() > 5_000, "{} triggers", expected.len());

    // Dynamic membership: a killed member leaves through its session timeout. The
    // exactly-once test and the static-member test cover a static member restarting.
    let members: Vec<Member> = ["w1", "w2", "w3", "w4"]
        .iter()
        .map(|n| member(&brokers, n, ""))
        .collect();
    let mut reader = TriggerReader::new(&brokers, "triggers");
    let mut running: Vec<Worker> = members[..3]
        .iter()
        .map(|m| Worker::start_with_env(&m.config, &m.log, &env))
        .collect();
    reader.read_until(Duration::from_secs(120), |d| d.len() >= expected.len() / 4);
    let at_kill = reader.trigger_ids().len();
    assert!(
        at_kill < expected.len() / 2,
        "the kill must come mid-stream"
    );
    running.remove(1).kill();
    let killed_at = jiff::Timestamp::now();
    running.push(Worker::start_with_env(
        &members[3].config,
        &members[3].log,
        &env,
    ));
    reader.read_until_ids(Duration::from_secs(240), expected.len());
    reader.read_for(Duration::from_secs(3));
    for worker in running {
        let log = worker.log();
        let status = worker.stop();
        if !status.success() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            panic!(
                "a worker exited with {status}; the end of its log:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
    let delivered = reader.trigger_ids();
    eprintln!(
        "{} expected, {} delivered ({} records), {at_kill} before the kill",
        expected.len(),
        delivered.len(),
        reader.delivered.len()
    );
    assert_same_ids(&expected, &delivered);

    let logs: Vec<(&str, &Path, Option<jiff::Timestamp>)> = ["w1", "w2", "w3", "w4"]
        .iter()
        .zip(&members)
        .map(|(name, m)| (*name, m.log.as_path(), (*name == "w2").then_some(killed_at)))
        .collect();
    let moves = assert_one_owner_at_a_time(ownership(&logs));
    eprintln!("{moves} partition moves, none with two owners at once");
    assert!(moves > 0, "partitions moved");

    let restored = log_lines(
        &members[3].log,
        "partition state restored from the changelog",
    );
    let restored_records: u64 = restored.iter().filter_map(|l| l["records"].as_u64()).sum();
    eprintln!(
        "the joiner restored {} partitions ({restored_records} records)",
        restored.len()
    );
    assert!(
        restored_records > 0,
        "the joiner, with an empty disk, took over partitions by restoring them"
    );

    let dirs: Vec<&Path> = [0, 2, 3, 1]
        .iter()
        .map(|i| members[*i].dir.path())
        .collect();
    assert_same_activity(&dirs, &replay_state);
}

/// The reference: replay of the same events with the same rules, state kept. Returns the
/// directory holding it, the replay's state directory and its trigger ids.
fn replay_reference(
    events: &[rekindle_events::ActivityEvent],
    until: i64,
) -> (tempfile::TempDir, PathBuf, BTreeSet<String>) {
    let reference = tempfile::tempdir().expect("temp dir");
    let input = reference.path().join("events.jsonl");
    write_replay_file(&input, events);
    let rules = write_lapsed_only_config(reference.path());
    let replay_state = reference.path().join("state");
    let output = std::process::Command::new(rekindle_binary())
        .args([
            "--config",
            rules.to_str().expect("path"),
            "replay",
            "--input",
        ])
        .arg(&input)
        .args(["--until-ms", &until.to_string(), "--state-dir"])
        .arg(&replay_state)
        .output()
        .expect("replay");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let expected: BTreeSet<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            v["trigger_id"].as_str().expect("trigger_id").to_string()
        })
        .collect();
    (reference, replay_state, expected)
}

/// A mock cluster with the test's topics, the activity topic loaded with 12,000 users'
/// scripted histories (one record per batch), and what replay makes of them.
struct Setup {
    _mock: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    brokers: String,
    _reference: tempfile::TempDir,
    replay_state: PathBuf,
    expected: BTreeSet<String>,
}

fn setup(seed: u64) -> Setup {
    let mock = MockCluster::new(1).expect("mock cluster");
    let brokers = mock.bootstrap_servers();
    let changelog = format!("{GROUP}.changelog");
    for (topic, partitions) in [
        ("activity", PARTITIONS as i32),
        ("triggers", 2),
        (DEAD_LETTERS, 1),
        (changelog.as_str(), PARTITIONS as i32),
    ] {
        mock.create_topic(topic, partitions, 1).expect("topic");
    }
    let t0 = (now_ms() - 60 * DAY).div_euclid(DAY) * DAY;
    let events = scripted(12_000, t0, seed);
    let until = now_ms();
    produce(
        &brokers,
        "activity",
        &avro_payloads(&events),
        Batching::OnePerBatch,
    );
    let (reference, replay_state, expected) = replay_reference(&events, until);
    Setup {
        _mock: mock,
        brokers,
        _reference: reference,
        replay_state,
        expected,
    }
}

fn assert_same_ids(expected: &BTreeSet<String>, delivered: &BTreeSet<String>) {
    let missing: Vec<_> = expected.difference(delivered).take(5).collect();
    let extra: Vec<_> = delivered.difference(expected).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
}

/// Asserts that no partition had two owners at once; returns the partitions' moves.
fn assert_one_owner_at_a_time(
    owners: BTreeMap<u32, Vec<(jiff::Timestamp, jiff::Timestamp, String)>>,
) -> usize {
    let mut moves = 0;
    for (partition, mut spans) in owners {
        spans.sort();
        moves += spans.len() - 1;
        for pair in spans.windows(2) {
            let ((_, earlier_to, earlier), (later_from, _, later)) = (&pair[0], &pair[1]);
            assert!(
                later_from > earlier_to,
                "partition {partition} had two owners: {later} took it at {later_from} while \
                 {earlier} held it until {earlier_to}"
            );
        }
    }
    moves
}

/// Asserts that every user's activity in the stores of `dirs` equals replay's.
fn assert_same_activity(dirs: &[&Path], replay_state: &Path) {
    let live = live_activity(dirs);
    let replayed: BTreeMap<String, Activity> = Store::open_read_only(replay_state)
        .expect("replay state")
        .profiles(0)
        .expect("profiles")
        .into_iter()
        .map(|(u, p)| (u, activity(&p)))
        .collect();
    assert_eq!(live.len(), replayed.len(), "users");
    let differing: Vec<_> = replayed
        .iter()
        .filter(|(u, a)| live.get(*u) != Some(a))
        .map(|(u, _)| u)
        .take(5)
        .collect();
    assert!(
        differing.is_empty(),
        "profiles differ from replay: {differing:?}"
    );
}
