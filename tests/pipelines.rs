//! A worker with two pipelines (`pipeline.threads = 2`) against a real broker process: two
//! members of the group in one process, sharing one state directory. 1,000 users' scripted
//! histories, then a clock tick at the end of them; the triggers delivered are exactly the
//! expected ones, with the ids `rekindle replay` gives, and both pipelines processed events,
//! each event once, and stopped cleanly. In the first test every record is produced once
//! the group has spread the partitions over both pipelines; in the second, half of them
//! before the worker starts, so that partitions move from a running pipeline to the other.
//!
//! The worker sends no ticks of its own: the histories lie in the past, and a tick at the
//! wall clock ahead of them would judge them at that time instead of their own.

use rekindle_suite::support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rekindle_events::ActivityEvent;
use support::broker::{create_topic, produce, produce_ticks, Batching, Broker};
use support::histories::{
    assert_same_episodes, avro_payloads, expected, scripted, write_replay_file,
};
use support::worker::{
    log_lines, log_partitions, log_pipeline, log_resume_offsets, replayed_trigger_ids,
    write_config_with, TriggerReader, Worker, WorkerOptions, ASSIGNED, DEAD_LETTERS, REVOKED,
};
use support::{now_ms, DAY};

const PARTITIONS: u32 = 4;

/// Each pipeline's partitions as the log tells them so far (assignments add, revocations
/// remove).
fn holdings(log: &std::path::Path) -> BTreeMap<u64, BTreeSet<u32>> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut held: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
    for line in text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        let message = line["message"].as_str().unwrap_or_default();
        let assigned = message == ASSIGNED;
        if !assigned && message != REVOKED {
            continue;
        }
        let Some(pipeline) = log_pipeline(&line) else {
            continue;
        };
        let partitions = log_partitions(&line);
        let entry = held.entry(pipeline).or_default();
        for p in partitions {
            if assigned {
                entry.insert(p);
            } else {
                entry.remove(&p);
            }
        }
    }
    held
}

/// A broker, the topics, and a worker with two pipelines (no ticks of its own).
struct Setup {
    broker: Broker,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    log: std::path::PathBuf,
    worker: Worker,
}

fn start_worker(group: &str, env: &[(&str, &str)], before_start: impl FnOnce(&str)) -> Setup {
    let broker = Broker::start();
    create_topic(&broker.address, "activity", PARTITIONS as i32);
    create_topic(&broker.address, "triggers", 2);
    create_topic(&broker.address, DEAD_LETTERS, 1);
    before_start(&broker.address);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config_with(
        dir.path(),
        &broker.address,
        "activity",
        "triggers",
        group,
        &WorkerOptions {
            tick_interval: "0s",
            ..WorkerOptions::default()
        },
    );
    let log = dir.path().join("worker.log");
    let mut env = env.to_vec();
    env.push(("REKINDLE__PIPELINE__THREADS", "2"));
    let worker = Worker::start_with_env(&config, &log, &env);
    Setup {
        broker,
        dir,
        config,
        log,
        worker,
    }
}

/// Waits until the group has spread the partitions over both pipelines.
fn wait_for_spread(log: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let held = holdings(log);
        let spread = held.len() == 2
            && held.values().all(|p| !p.is_empty())
            && held.values().map(BTreeSet::len).sum::<usize>() == PARTITIONS as usize;
        if spread {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the group did not spread the partitions over both pipelines: {held:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Ends the histories with a tick at `until`, reads the triggers, stops the worker, and
/// checks: exactly the expected triggers, replay's ids, both pipelines processed events,
/// every event processed once.
fn finish(setup: Setup, events: &[ActivityEvent], until: i64) {
    let Setup {
        broker,
        dir,
        config,
        log,
        worker,
    } = setup;
    let expected = expected(events, until);
    assert!(expected.len() > 500, "a substantial trigger set");
    produce_ticks(&broker.address, "activity", PARTITIONS as i32, until);

    let mut reader = TriggerReader::new(&broker.address, "triggers");
    reader.read_until_ids(Duration::from_secs(180), expected.len());
    reader.read_for(Duration::from_secs(3));
    let status = worker.stop();
    assert!(status.success(), "worker exited with {status}");

    let got: BTreeSet<_> = reader.delivered.iter().map(|d| d.episode()).collect();
    assert_same_episodes(&expected, &got);
    let live = reader.trigger_ids();
    let replay_input = dir.path().join("histories.jsonl");
    write_replay_file(&replay_input, events);
    let replayed = replayed_trigger_ids(Some(&config), &replay_input, until);
    assert_eq!(
        replayed, live,
        "replay and the two pipelines agree on trigger ids"
    );

    let stopped = log_lines(&log, "worker stopped");
    let by_pipeline: BTreeMap<u64, u64> = stopped
        .iter()
        .filter_map(|l| Some((log_pipeline(l)?, l["events"].as_u64()?)))
        .collect();
    assert_eq!(
        by_pipeline.keys().copied().collect::<Vec<_>>(),
        [0, 1],
        "each pipeline stops once: {stopped:?}"
    );
    assert!(
        by_pipeline.values().all(|events| *events > 0),
        "both pipelines processed events: {by_pipeline:?}"
    );
    assert_eq!(
        by_pipeline.values().sum::<u64>(),
        events.len() as u64,
        "every event processed once"
    );
}

#[test]
fn two_pipelines_in_one_worker_deliver_exactly_the_expected_triggers() {
    let t0 = (now_ms() - 60 * DAY).div_euclid(DAY) * DAY;
    let events = scripted(1000, t0, 11);
    let until = now_ms();
    let setup = start_worker("rekindle-pipelines", &[], |_| {});
    // The second member joins after the first took every partition; wait for the group to
    // spread them, so that both pipelines process the records.
    wait_for_spread(&setup.log);
    produce(
        &setup.broker.address,
        "activity",
        &avro_payloads(&events),
        Batching::Default,
    );
    finish(setup, &events, until);
}

/// The first half of the histories is in the topic before the worker starts, and the second
/// pipeline joins the group 5 s after the first (a test-only delay): the first takes every
/// partition and processes it; the partitions the second then receives leave a running
/// pipeline, and it resumes them from the state that pipeline committed to the shared store
/// (claims, ARCHITECTURE.md invariant 14). The second half is produced after the move.
/// Records go in one per batch: a fetch starting inside a batch gets nothing from tansu
/// (see `Batching`).
#[test]
fn a_partition_moved_between_running_pipelines_resumes_from_the_state_the_first_left() {
    let t0 = (now_ms() - 60 * DAY).div_euclid(DAY) * DAY;
    let events = scripted(1000, t0, 17);
    let until = now_ms();
    let (first, second) = events.split_at(events.len() / 2);
    let delay = [("REKINDLE_TEST_PIPELINE_JOIN_DELAY_MS", "5000")];
    let setup = start_worker("rekindle-pipelines-move", &delay, |broker| {
        produce(
            broker,
            "activity",
            &avro_payloads(first),
            Batching::OnePerBatch,
        );
    });
    wait_for_spread(&setup.log);

    let assignments = log_lines(&setup.log, ASSIGNED);
    let first_owned: BTreeSet<u32> = assignments
        .iter()
        .filter(|l| log_pipeline(l) == Some(0))
        .flat_map(log_partitions)
        .collect();
    let resumed: BTreeMap<u32, Option<i64>> = assignments
        .iter()
        .filter(|l| log_pipeline(l) == Some(1))
        .flat_map(log_resume_offsets)
        .collect();
    let moved: Vec<(u32, i64)> = resumed
        .iter()
        .filter(|(p, _)| first_owned.contains(p))
        .filter_map(|(p, offset)| Some((*p, (*offset)?)))
        .collect();
    assert!(
        !moved.is_empty(),
        "no partition left the first pipeline for the second with state: first {first_owned:?}, second {resumed:?}"
    );
    eprintln!("moved from pipeline 0 to pipeline 1 (partition, resumed at): {moved:?}");

    produce(
        &setup.broker.address,
        "activity",
        &avro_payloads(second),
        Batching::Default,
    );
    finish(setup, &events, until);
}
