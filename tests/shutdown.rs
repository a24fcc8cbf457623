//! SIGTERM while the broker is frozen: the worker must leave within its shutdown grace
//! period (it cannot finish the batch in flight), and a restart must deliver every trigger,
//! re-sent ones under the same ids.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use support::broker::{create_topic, produce, Batching, Broker};
use support::histories::{assert_same_episodes, avro_payloads, expected, scripted};
use support::worker::{log_lines, write_config, Delivered, TriggerReader, Worker, DEAD_LETTERS};
use support::{now_ms, DAY};

/// `shutdown_grace` in the test configuration, plus slack for process start-up and exit.
const GRACE_LIMIT: Duration = Duration::from_secs(3 + 4);

#[test]
fn sigterm_with_a_frozen_broker_exits_within_the_grace_period_and_loses_nothing() {
    let broker = Broker::start();
    let t0 = (now_ms() - 60 * DAY).div_euclid(DAY) * DAY;
    let events = scripted(6_000, t0, 23);
    let expected = expected(&events, now_ms());
    create_topic(&broker.address, "activity", 4);
    create_topic(&broker.address, "triggers", 2);
    create_topic(&broker.address, DEAD_LETTERS, 1);
    // A restart may resume inside what would otherwise be one record batch (see Batching).
    produce(
        &broker.address,
        "activity",
        &avro_payloads(&events),
        Batching::OnePerBatch,
    );

    let mut dir = tempfile::tempdir().expect("temp dir");
    // REKINDLE_TEST_KEEP=1 keeps the worker's state and log for inspection.
    dir.disable_cleanup(std::env::var_os("REKINDLE_TEST_KEEP").is_some());
    eprintln!("worker directory: {}", dir.path().display());
    let config = write_config(
        dir.path(),
        &broker.address,
        "activity",
        "triggers",
        "rekindle-shutdown",
    );
    let log = dir.path().join("worker.log");
    let mut reader = TriggerReader::new(&broker.address, "triggers");
    let worker = Worker::start(&config, &log);
    reader.read_until(Duration::from_secs(120), |d| d.len() >= expected.len() / 3);
    assert!(
        reader.delivered.len() < expected.len(),
        "the worker is stopped mid-stream"
    );

    broker.signal("STOP");
    let started = Instant::now();
    let status = worker.stop_within(GRACE_LIMIT);
    let took = started.elapsed();
    broker.signal("CONT");
    // The killed member's session clock was frozen with the broker: give the broker one
    // session timeout (6s in the test configuration) to expire it before a new member joins.
    std::thread::sleep(Duration::from_secs(8));
    eprintln!("worker exited with {status} {took:?} after SIGTERM, broker frozen");
    assert!(
        status.success() || status.code() == Some(3),
        "exit 0 (batch finished) or 3 (grace period expired), got {status}"
    );
    assert!(!log_lines(&log, "shutdown requested: finishing the current batch").is_empty());

    let worker = Worker::start(&config, &log);
    let unique = |d: &[Delivered]| {
        d.iter()
            .map(|t| &t.trigger_id)
            .collect::<BTreeSet<_>>()
            .len()
    };
    reader.read_until(Duration::from_secs(180), |d| unique(d) >= expected.len());
    reader.read_for(Duration::from_secs(2));
    assert!(worker.stop().success());

    let got: BTreeSet<_> = reader.delivered.iter().map(Delivered::episode).collect();
    assert_same_episodes(&expected, &got);
    let mut ids: BTreeMap<_, BTreeSet<&str>> = BTreeMap::new();
    for d in &reader.delivered {
        ids.entry(d.episode())
            .or_default()
            .insert(d.trigger_id.as_str());
    }
    assert!(
        ids.values().all(|set| set.len() == 1),
        "a re-sent trigger keeps its trigger_id"
    );
}
