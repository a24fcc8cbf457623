//! SIGKILL the worker mid-stream, several times, and restart it on the same state: no
//! trigger may be lost, and a trigger delivered twice must carry the same trigger_id.

mod support;

use std::time::Duration;

use support::broker::Batching;
use support::scenario::{assert_delivered_at_least_once, unique_ids, Scenario};
use support::worker::{write_config, TriggerReader, Worker};

#[test]
fn killed_and_restarted_worker_loses_no_trigger() {
    let Scenario {
        broker,
        expected,
        dir,
        ..
    } = Scenario::start(12_000, 11, Batching::OnePerBatch);
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
    reader.read_until(Duration::from_secs(180), |d| {
        unique_ids(d) >= expected.len()
    });
    reader.read_for(Duration::from_secs(2));
    assert!(worker.stop().success());

    assert_delivered_at_least_once(&expected, &reader.delivered);
    eprintln!(
        "delivered {} triggers for {} expected after {kills} kills ({} duplicates)",
        reader.delivered.len(),
        expected.len(),
        reader.delivered.len() - expected.len()
    );
}
