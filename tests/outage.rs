//! The broker goes away for 30 seconds mid-stream and comes back with its data (a durable
//! tansu on a local S3 server): the worker reports not-ready, keeps its memory bounded,
//! resumes on its own, and no trigger is lost.

use rekindle_suite::support;

use std::time::{Duration, Instant};

use support::broker::{Batching, Broker, ObjectStore};
use support::scenario::{finish_and_check, Scenario};
use support::worker::{http_get, write_config_with, TriggerReader, Worker, WorkerOptions};

const OUTAGE: Duration = Duration::from_secs(30);

/// Polls /health/readyz until it answers `status`, or panics after `limit`.
fn wait_for_readiness(config: &std::path::Path, status: u16, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let (got, _) = http_get(config, "/health/readyz");
        if got == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "/health/readyz did not answer {status} within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_30_second_broker_outage_loses_nothing() {
    let store = ObjectStore::start();
    let Scenario {
        mut broker,
        expected,
        dir,
        ..
    } = Scenario::start_on(
        Broker::start_durable(&store),
        // Every one-record batch is an object in the store: keep the stream modest.
        300,
        23,
        Batching::OnePerBatch,
    );
    let config = write_config_with(
        dir.path(),
        &broker.address,
        "activity",
        "triggers",
        "rekindle-outage",
        &WorkerOptions {
            // Every record batch is an object in the (slow, local) store: tick gently.
            tick_interval: "1s",
            ..WorkerOptions::default()
        },
    );
    // The worker's default grace for finishing its batch at SIGTERM, not the tests' 3 s: the
    // durable broker answers slowly for a while after its restart (every record batch is an
    // object in the store), and in one CI run the batch in flight 3 s after the partitions
    // came back was not finished 3 s after SIGTERM.
    let worker = Worker::start_with_env(
        &config,
        &dir.path().join("worker.log"),
        &[("REKINDLE__PIPELINE__SHUTDOWN_GRACE", "20s")],
    );
    let mut reader = TriggerReader::new(&broker.address, "triggers");
    reader.read_until(Duration::from_secs(120), |d| d.len() >= expected.len() / 4);
    let before = reader.trigger_ids().len();
    assert!(
        before < expected.len(),
        "the outage must come mid-stream (the worker finished too early)"
    );
    wait_for_readiness(&config, 200, Duration::from_secs(10));

    broker.stop();
    let stopped = Instant::now();
    let noticed = wait_for_readiness(&config, 503, OUTAGE);
    let mut peak_rss = 0;
    while stopped.elapsed() < OUTAGE {
        peak_rss = peak_rss.max(worker.rss_bytes());
        std::thread::sleep(Duration::from_millis(500));
    }
    broker.restart();
    let recovered = wait_for_readiness(&config, 200, Duration::from_secs(60));

    // Everything delivered, read afresh: the first reader sat through the outage too.
    drop(reader);
    let mut reader = TriggerReader::new(&broker.address, "triggers");
    finish_and_check(worker, &mut reader, &expected, Duration::from_secs(240));
    // Waiting on a dead broker holds one batch and its unacknowledged sends, nothing more.
    assert!(
        peak_rss < 512 * 1024 * 1024,
        "memory grew during the outage: {peak_rss} bytes"
    );
    eprintln!(
        "{before} of {} triggers before the outage; not ready after {noticed:?}; ready again {recovered:?} after the restart; peak RSS during the outage {} MiB; {} deliveries in all",
        expected.len(),
        peak_rss / (1024 * 1024),
        reader.delivered.len()
    );
}
