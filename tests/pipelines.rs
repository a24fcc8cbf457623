//! A worker with two pipelines (`pipeline.threads = 2`) against a real broker process: two
//! members of the group in one process, sharing one state directory. Once the group has
//! spread the partitions over both, 1,000 users' scripted histories are produced, then a
//! clock tick at the end of them; the triggers delivered are exactly the expected ones,
//! with the ids `rekindle replay` gives, and both pipelines processed events and stopped
//! cleanly.
//!
//! The worker sends no ticks of its own: the histories lie in the past, and a tick at the
//! wall clock ahead of them would judge them at that time instead of their own.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use support::broker::{create_topic, produce, produce_ticks, Batching, Broker};
use support::histories::{
    assert_same_episodes, avro_payloads, expected, scripted, write_replay_file,
};
use support::worker::{
    log_lines, log_partitions, log_pipeline, replayed_trigger_ids, write_config_with,
    TriggerReader, Worker, WorkerOptions, ASSIGNED, DEAD_LETTERS, REVOKED,
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

#[test]
fn two_pipelines_in_one_worker_deliver_exactly_the_expected_triggers() {
    let broker = Broker::start();
    let t0 = (now_ms() - 60 * DAY).div_euclid(DAY) * DAY;
    let events = scripted(1000, t0, 11);
    let until = now_ms();
    let expected = expected(&events, until);
    assert!(expected.len() > 500, "a substantial trigger set");

    create_topic(&broker.address, "activity", PARTITIONS as i32);
    create_topic(&broker.address, "triggers", 2);
    create_topic(&broker.address, DEAD_LETTERS, 1);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config_with(
        dir.path(),
        &broker.address,
        "activity",
        "triggers",
        "rekindle-pipelines",
        &WorkerOptions {
            tick_interval: "0s",
            ..WorkerOptions::default()
        },
    );
    let log = dir.path().join("worker.log");
    let worker = Worker::start_with_env(&config, &log, &[("REKINDLE__PIPELINE__THREADS", "2")]);

    // The second member joins after the first took every partition; wait for the group to
    // spread them, so that both pipelines process the records.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let held = holdings(&log);
        let spread = held.len() == 2
            && held.values().all(|p| !p.is_empty())
            && held.values().map(BTreeSet::len).sum::<usize>() == PARTITIONS as usize;
        if spread {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the group did not spread the partitions over both pipelines: {held:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    produce(
        &broker.address,
        "activity",
        &avro_payloads(&events),
        Batching::Default,
    );
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
    write_replay_file(&replay_input, &events);
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
