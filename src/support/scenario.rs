//! The set-up most broker tests share: a tansu broker, a scripted history produced to the
//! activity topic, empty trigger and dead-letter topics, and a directory for the worker.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rekindle_events::ActivityEvent;

use super::broker::{create_topic, produce, Batching, Broker};
use super::histories::{assert_same_episodes, avro_payloads, expected, scripted, Episode};
use super::worker::{Delivered, TriggerReader, Worker, DEAD_LETTERS};
use super::{now_ms, DAY};

pub struct Scenario {
    pub broker: Broker,
    pub events: Vec<ActivityEvent>,
    pub expected: BTreeSet<Episode>,
    /// The worker's directory; `REKINDLE_TEST_KEEP=1` keeps it for inspection.
    pub dir: tempfile::TempDir,
}

impl Scenario {
    /// `users` scripted users (seeded) over the last 60 days, produced to "activity".
    pub fn start(users: usize, seed: u64, batching: Batching) -> Scenario {
        Scenario::start_on(Broker::start(), users, seed, batching)
    }

    /// The same, on a broker the caller started (a durable one, for outages).
    pub fn start_on(broker: Broker, users: usize, seed: u64, batching: Batching) -> Scenario {
        let t0 = (now_ms() - 60 * DAY).div_euclid(DAY) * DAY;
        let events = scripted(users, t0, seed);
        let expected = expected(&events, now_ms());
        create_topic(&broker.address, "activity", 4);
        create_topic(&broker.address, "triggers", 2);
        create_topic(&broker.address, DEAD_LETTERS, 1);
        produce(
            &broker.address,
            "activity",
            &avro_payloads(&events),
            batching,
        );
        let mut dir = tempfile::tempdir().expect("temp dir");
        dir.disable_cleanup(std::env::var_os("REKINDLE_TEST_KEEP").is_some());
        eprintln!("worker directory: {}", dir.path().display());
        Scenario {
            broker,
            events,
            expected,
            dir,
        }
    }
}

/// The end of every fault test: read until every expected trigger arrived (or `timeout`
/// passed), keep reading for 2 s to catch extras, stop `worker` (it must exit 0) and check
/// what was delivered.
pub fn finish_and_check(
    worker: Worker,
    reader: &mut TriggerReader,
    expected: &BTreeSet<Episode>,
    timeout: Duration,
) {
    reader.read_until_ids(timeout, expected.len());
    reader.read_for(Duration::from_secs(2));
    let stopping = std::time::Instant::now();
    let status = worker.stop();
    eprintln!("the worker stopped {:?} after SIGTERM", stopping.elapsed());
    assert!(status.success(), "the worker exits 0 at the end: {status}");
    assert_delivered_at_least_once(expected, &reader.delivered);
}

/// Every expected trigger and nothing else was delivered, and any trigger delivered more
/// than once (a re-send after a crash) carried the same trigger_id each time.
pub fn assert_delivered_at_least_once(expected: &BTreeSet<Episode>, delivered: &[Delivered]) {
    let got: BTreeSet<_> = delivered.iter().map(Delivered::episode).collect();
    assert_same_episodes(expected, &got);
    let mut ids: BTreeMap<Episode, BTreeSet<&str>> = BTreeMap::new();
    for d in delivered {
        ids.entry(d.episode())
            .or_default()
            .insert(d.trigger_id.as_str());
    }
    assert!(
        ids.values().all(|set| set.len() == 1),
        "a re-sent trigger keeps its trigger_id"
    );
}
