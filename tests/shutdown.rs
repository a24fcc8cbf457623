//! SIGTERM while the broker is frozen: the worker must leave within its shutdown grace
//! period (it cannot finish the batch in flight), and a restart must deliver every trigger,
//! re-sent ones under the same ids.

use rekindle_suite::support;

use std::time::{Duration, Instant};

use support::broker::Batching;
use support::scenario::{finish_and_check, Scenario};
use support::worker::{log_lines, write_config, TriggerReader, Worker};

/// `shutdown_grace` in the test configuration, plus slack for process start-up and exit.
const GRACE_LIMIT: Duration = Duration::from_secs(3 + 4);

#[test]
fn sigterm_with_a_frozen_broker_exits_within_the_grace_period_and_loses_nothing() {
    // A restart may resume inside what would otherwise be one record batch (see Batching).
    let Scenario {
        broker,
        expected,
        dir,
        ..
    } = Scenario::start(6_000, 23, Batching::OnePerBatch);
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
    finish_and_check(worker, &mut reader, &expected, Duration::from_secs(180));
}
