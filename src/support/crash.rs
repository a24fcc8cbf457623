//! The crash test's body, run with RocksDB's write-ahead log and without it.

use std::time::Duration;

use rand::{Rng, SeedableRng};

use super::broker::Batching;
use super::scenario::{finish_and_check, Scenario};
use super::worker::{write_config_with, TriggerReader, Worker, WorkerOptions};

/// SIGKILLs the worker at ten random points of a 200k-event stream, restarting it on the
/// same state each time, then checks that no trigger was lost and that a trigger delivered
/// twice carried the same trigger_id. `state` adds lines to the worker's `[state]` table.
pub fn killed_and_restarted(group: &str, state: &str) {
    let Scenario {
        broker,
        events,
        expected,
        dir,
    } = Scenario::start(24_500, 11, Batching::OnePerBatch);
    assert!(events.len() >= 200_000, "{} events", events.len());
    let config = write_config_with(
        dir.path(),
        &broker.address,
        "activity",
        "triggers",
        group,
        &WorkerOptions {
            state,
            ..WorkerOptions::default()
        },
    );
    let log = dir.path().join("worker.log");
    let mut reader = TriggerReader::new(&broker.address, "triggers");
    // Ten kill points, random but reproducible, spread over the stream.
    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    let mut fractions: Vec<f64> = (0..10).map(|_| rng.random_range(0.03..0.9)).collect();
    fractions.sort_by(f64::total_cmp);
    let mut kills = 0;
    for fraction in fractions {
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
        kills >= 10,
        "the worker must be killed mid-stream ten times (it finished too early)"
    );
    let worker = Worker::start(&config, &log);
    finish_and_check(worker, &mut reader, &expected, Duration::from_secs(180));
    eprintln!(
        "delivered {} triggers for {} expected after {kills} kills ({} duplicates)",
        reader.delivered.len(),
        expected.len(),
        reader.delivered.len() - expected.len()
    );
}
