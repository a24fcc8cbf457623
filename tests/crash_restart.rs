//! SIGKILL the worker mid-stream, several times, and restart it on the same state: no
//! trigger may be lost, and a trigger delivered twice must carry the same trigger_id.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use support::broker::{create_topic, produce, Batching, Broker};
use support::histories::{assert_same_episodes, avro_payloads, expected, scripted};
use support::worker::{write_config, Delivered, TriggerReader, Worker, DEAD_LETTERS};
use support::{now_ms, DAY};

#[test]
fn killed_and_restarted_worker_loses_no_trigger() {
    let broker = Broker::start();
    let t0 = (now_ms() - 60 * DAY).div_euclid(DAY) * DAY;
    let events = scripted(12_000, t0, 11);
    let expected = expected(&events, now_ms());
    create_topic(&broker.address, "activity", 4);
    create_topic(&broker.address, "triggers", 2);
    create_topic(&broker.address, DEAD_LETTERS, 1);
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
        "rekindle-crash",
    );
    let log = dir.path().join("worker.log");
    let mut reader = TriggerReader::new(&broker.address, "triggers");
    let mut kills = 0;
    for fraction in [0.15, 0.4, 0.65] {
        let worker = Worker::start(&config, &log);
        let target = (expected.len() as f64 * fraction) as usize;
        reader.read_until(Duration::from_secs(120), |d| d.len() >= target);
        let before_kill = reader.delivered.len();
        worker.kill();
        if before_kill < expected.len() {
            kills += 1;
        }
    }
    assert!(
        kills >= 2,
        "the worker must be killed mid-stream (it finished too early)"
    );
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
    let mut ids: BTreeMap<(String, i64), BTreeSet<String>> = BTreeMap::new();
    for d in &reader.delivered {
        ids.entry((d.user_id.clone(), d.last_active_ms))
            .or_default()
            .insert(d.trigger_id.clone());
    }
    assert!(
        ids.values().all(|set| set.len() == 1),
        "a re-sent trigger keeps its trigger_id"
    );
    eprintln!(
        "delivered {} triggers for {} expected after {kills} kills ({} duplicates)",
        reader.delivered.len(),
        expected.len(),
        reader.delivered.len() - expected.len()
    );
}
