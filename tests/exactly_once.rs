//! Exactly-once on librdkafka's mock cluster (it supports transactions and error injection;
//! tansu does not support EndTxn). Each batch's triggers, changelog records and consumed
//! offsets go out in one transaction. Injected errors: retriable ones at every transaction
//! step, the trigger topic's authorization revoked for 2 s of processing (every transaction
//! then aborts), and three crashes at the worst point (the batch's triggers are in Kafka,
//! nothing records it yet), each followed by a restart of the same static member. The
//! read_committed view of the trigger topic must hold every expected trigger exactly once. A
//! control run without transactions, crashed at its own worst point (triggers acknowledged,
//! changelog not yet sent), shows the duplicates the check is there to catch.
//!
//! The mock cluster writes no transaction markers, so a read_committed consumer (the test's,
//! and the worker's changelog restore) also sees whatever an aborted transaction wrote. The
//! injected aborts therefore refuse adding partitions to the transaction, so that nothing of
//! those transactions reaches the log, which is what the worker's abort path must recover
//! from; markers themselves are the broker's business. The refusal covers every partition of
//! the request, as Kafka answers a request naming an unauthorized topic (the others get
//! OPERATION_NOT_ATTEMPTED). The mock's own topic error refuses only that topic's partitions
//! and adds the rest: the changelog records of a transaction refused that way reached the
//! log, and a restart restored state whose triggers were never delivered.

use rekindle_suite::support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use support::broker::{produce, Batching};
use support::histories::{assert_same_episodes, avro_payloads, expected, scripted, Episode};
use support::worker::{
    log_lines, write_config_with, TriggerReader, Worker, WorkerOptions, DEAD_LETTERS,
};
use support::{now_ms, DAY};

const CRASH: &str = "REKINDLE_TEST_CRASH_BEFORE_STATE_COMMIT";
const GROUP: &str = "rekindle-eos";
const ABORTED: &str = "transaction failed; aborting it and processing the batch again";

struct Run {
    delivered: Vec<support::worker::Delivered>,
    expected: BTreeSet<Episode>,
    aborted: usize,
    crashes: usize,
}

fn run(exactly_once: bool) -> Run {
    let mock = MockCluster::new(1).expect("mock cluster");
    let brokers = mock.bootstrap_servers();
    for (topic, partitions) in [
        ("activity", 4),
        ("triggers", 2),
        (DEAD_LETTERS, 1),
        ("rekindle-eos.changelog", 4),
    ] {
        mock.create_topic(topic, partitions, 1).expect("topic");
    }
    let t0 = (now_ms() - 60 * DAY).div_euclid(DAY) * DAY;
    let events = scripted(2_000, t0, 21);
    let expected = expected(&events, now_ms());
    produce(
        &brokers,
        "activity",
        &avro_payloads(&events),
        Batching::Default,
    );

    let mut dir = tempfile::tempdir().expect("temp dir");
    dir.disable_cleanup(std::env::var_os("REKINDLE_TEST_KEEP").is_some());
    eprintln!("worker directory: {}", dir.path().display());
    let kafka = format!("group_instance_id = \"w1\"\nexactly_once = {exactly_once}");
    let config = write_config_with(
        dir.path(),
        &brokers,
        "activity",
        "triggers",
        GROUP,
        &WorkerOptions {
            kafka: &kafka,
            ..WorkerOptions::default()
        },
    );
    let log = dir.path().join("worker.log");
    let mut reader = TriggerReader::new(&brokers, "triggers");

    // Retriable errors at every step of a transaction: librdkafka retries them, and a retry
    // must never duplicate or lose a record.
    use RDKafkaRespErr::*;
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 3],
    );
    mock.request_errors(
        RDKafkaApiKey::AddPartitionsToTxn,
        &[RD_KAFKA_RESP_ERR_CONCURRENT_TRANSACTIONS; 2],
    );
    mock.request_errors(
        RDKafkaApiKey::TxnOffsetCommit,
        &[RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS; 2],
    );
    mock.request_errors(
        RDKafkaApiKey::EndTxn,
        &[RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE; 2],
    );
    // Three crashes, each once a commit's triggers reached Kafka and before the local
    // commit: with transactions after the 4th commit (one per batch); without, after the
    // first, which holds every batch processed since the start (those that follow may
    // hold only clock ticks). In the second round the trigger topic's authorization is
    // revoked for a while: every transaction in that time fails to add its partitions and
    // is aborted, and its batch is processed again once the topic is back.
    let mut crashes = 0;
    for round in 0..3 {
        let crash_at = if exactly_once { "4" } else { "1" };
        let mut worker = Worker::start_with_env(&config, &log, &[(CRASH, crash_at)]);
        if round == 1 && exactly_once {
            // More refusals than transactions in the time; the rest are cleared below.
            mock.request_errors(
                RDKafkaApiKey::AddPartitionsToTxn,
                &vec![RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 10_000],
            );
            // Refused until transactions have failed on it for 2 s (the worker first has to
            // rejoin the group).
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while log_lines(&log, ABORTED).is_empty() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            std::thread::sleep(Duration::from_secs(2));
            mock.clear_request_errors(RDKafkaApiKey::AddPartitionsToTxn);
        }
        let status = worker
            .wait_exit(Duration::from_secs(60))
            .expect("the worker reaches the crash point");
        assert!(!status.success(), "it died there: {status:?}");
        crashes += 1;
    }
    let worker = Worker::start(&config, &log);
    reader.read_until(Duration::from_secs(120), |d| {
        d.iter().map(|t| t.episode()).collect::<BTreeSet<_>>().len() >= expected.len()
    });
    reader.read_for(Duration::from_secs(3));
    assert!(worker.stop().success(), "the worker exits 0 at the end");
    let aborted = log_lines(&log, ABORTED).len();
    Run {
        delivered: reader.delivered,
        expected,
        aborted,
        crashes,
    }
}

fn copies(delivered: &[support::worker::Delivered]) -> BTreeMap<&str, usize> {
    let mut copies: BTreeMap<&str, usize> = BTreeMap::new();
    for d in delivered {
        *copies.entry(d.trigger_id.as_str()).or_default() += 1;
    }
    copies
}

#[test]
fn transactions_deliver_every_trigger_exactly_once_through_errors_and_crashes() {
    let run = run(true);
    let got: BTreeSet<Episode> = run.delivered.iter().map(|d| d.episode()).collect();
    assert_same_episodes(&run.expected, &got);
    let doubled: Vec<_> = copies(&run.delivered)
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    eprintln!(
        "{} triggers expected, {} records read, {} crashes, {} aborted transactions",
        run.expected.len(),
        run.delivered.len(),
        run.crashes,
        run.aborted
    );
    assert!(doubled.is_empty(), "delivered more than once: {doubled:?}");
    assert!(
        run.aborted >= 1,
        "the refused partitions aborted transactions"
    );
}

#[test]
fn without_transactions_the_same_crashes_send_batches_again() {
    let run = run(false);
    let got: BTreeSet<Episode> = run.delivered.iter().map(|d| d.episode()).collect();
    assert_same_episodes(&run.expected, &got);
    let doubled = copies(&run.delivered).values().filter(|n| **n > 1).count();
    eprintln!("at least once: {doubled} triggers delivered more than once");
    assert!(
        doubled > 0,
        "a crash after the send and before the state commit re-sends that batch"
    );
}
