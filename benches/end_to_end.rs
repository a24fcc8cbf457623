//! End to end against a real broker (a tansu process), in one run:
//!
//! 1. A topic of 4 partitions is loaded with 2,000,000 Confluent-framed Avro activity events
//!    (200,000 users over 35 days).
//! 2. **Raw consume baseline**: an rdkafka consumer with the worker's client settings reads
//!    the whole topic and discards it: the ceiling of any Kafka pipeline on this broker.
//! 3. **The worker**: `rekindle run` with the default rules, fresh state, processes the same
//!    topic; done when its metrics count every event processed. Its seconds per loop step
//!    (`rekindle_pipeline_phase_seconds_total`) show where the time went. Then the same
//!    with two pipelines in the worker (`pipeline.threads = 2`), from fresh state under
//!    another group. A worker that stops making progress short of the count is reported as
//!    stalled: on tansu a partition that moves between members mid-stream can resume inside
//!    a record batch, which tansu does not serve (the two pipelines' start-up moves half the
//!    partitions from the first to the second).
//! 4. **Trigger latency**: 2,000 more users whose lapse deadlines fall 10 to 40 s into the
//!    run; for each trigger, the moment it is readable on the delivery topic minus its due
//!    time (p50, p99, max), with the clock tick at its default (250 ms).
//!
//! Needs `tansu` (deploy/setup.sh installs it) and the release binary (`make bench` builds
//! it). `REKINDLE_E2E_EVENTS` changes the number of events.

use rekindle_suite::support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;
use rekindle_events::{encode_event, ActivityEvent, TriggerDecoder};
use support::broker::free_port;
use support::broker::{create_topic, produce, Batching, Broker};
use support::worker::{try_http_get, Worker};
use support::{now_ms, Rng, DAY};

const PARTITIONS: i32 = 4;
const USERS: u64 = 200_000;
const LATENCY_USERS: u64 = 2_000;
const DEFAULT_EVENTS: u64 = 2_000_000;
/// A worker that processes nothing for this long is not going to finish.
const STALL: Duration = Duration::from_secs(30);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; a `cargo test --benches` run does nothing.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let events: u64 = std::env::var("REKINDLE_E2E_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_EVENTS);
    let broker = Broker::start();
    create_topic(&broker.address, "bench.activity", PARTITIONS);
    create_topic(&broker.address, "bench.triggers", PARTITIONS);
    create_topic(&broker.address, "dead-letters", 1);

    let history = history(events);
    let loading = Instant::now();
    produce(
        &broker.address,
        "bench.activity",
        &history,
        Batching::Default,
    );
    let load_seconds = loading.elapsed().as_secs_f64();

    let raw_seconds = raw_consume(&broker.address, "bench.activity", events);

    let one = WorkerRun::start(&broker.address, events, "rekindle-bench", 1)
        .unwrap_or_else(|stalled| panic!("{stalled}"));
    let latencies = trigger_latency(&broker.address);
    let one = one.stop();
    // The same topic again, from fresh state under another group: two pipelines in one
    // worker (`pipeline.threads = 2`), the machine's two cores.
    let two = WorkerRun::start(&broker.address, events, "rekindle-bench-2", 2).map(WorkerRun::stop);

    let rate = |seconds: f64| events as f64 / seconds;
    println!();
    println!("end to end: {events} Avro events, {PARTITIONS} partitions, tansu on this machine");
    println!("{:<34} {:>12} {:>10}", "", "events/s", "seconds");
    println!(
        "{:<34} {:>12.0} {:>10.1}",
        "loading the topic (producer)",
        rate(load_seconds),
        load_seconds
    );
    println!(
        "{:<34} {:>12.0} {:>10.1}",
        "raw consume (read and discard)",
        rate(raw_seconds),
        raw_seconds
    );
    let mut runs = vec![("rekindle run (default rules)", "worker", &one)];
    match &two {
        Ok(two) => runs.push(("the same, pipeline.threads = 2", "worker, 2 pipelines", two)),
        Err(stalled) => println!("{stalled}"),
    }
    for (row, _, run) in &runs {
        println!(
            "{row:<34} {:>12.0} {:>10.1}",
            rate(run.seconds),
            run.seconds
        );
    }
    for (_, name, run) in &runs {
        println!(
            "{name} / raw consume: {:.2} ({:.1} s to the first event processed)",
            rate(run.seconds) / rate(raw_seconds),
            run.first_seconds
        );
    }
    for (_, name, run) in &runs {
        let busy: f64 = run.phases.iter().map(|(_, s)| s).sum();
        println!(
            "{name}: seconds per step of the loop, summed over pipelines (of {:.1} s; the rest is start-up):",
            run.seconds
        );
        for (phase, seconds) in &run.phases {
            println!(
                "  {phase:<10} {seconds:>8.1} s {:>5.1} %",
                100.0 * seconds / busy.max(f64::MIN_POSITIVE)
            );
        }
    }
    let percentile = |p: f64| {
        let at = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies.get(at).copied().unwrap_or(f64::NAN)
    };
    println!(
        "trigger latency, due to readable on the delivery topic ({} triggers): p50 {:.3} s, p99 {:.3} s, max {:.3} s",
        latencies.len(),
        percentile(0.5),
        percentile(0.99),
        latencies.last().copied().unwrap_or(f64::NAN),
    );
}

/// `rekindle run` on the loaded topic, from fresh state under its own group.
struct WorkerRun {
    _dir: tempfile::TempDir,
    worker: Option<Worker>,
    /// From the start of the process until its metrics count every event.
    seconds: f64,
    /// From the start until the first event was processed (joining the group, restoring).
    first_seconds: f64,
    /// Seconds per step of the loop (`rekindle_pipeline_phase_seconds_total`).
    phases: Vec<(String, f64)>,
}

impl WorkerRun {
    /// Starts the worker with `threads` pipelines and returns once it has processed
    /// `events` events, still running; an error if it stops making progress short of them.
    fn start(brokers: &str, events: u64, group: &str, threads: usize) -> Result<WorkerRun, String> {
        let dir = tempfile::tempdir().expect("temporary directory");
        // The worker's defaults (rules, batches, clock ticks, changelog), but for where
        // things are and the fetch wait the demo uses against tansu (the raw consumer uses
        // it too).
        let config = dir.path().join("rekindle.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
activity_topic = "bench.activity"
trigger_topic = "bench.triggers"
dead_letter_topic = "dead-letters"
create_topics = true
create_partitions = {PARTITIONS}
[kafka.consumer]
"fetch.wait.max.ms" = "10"
[state]
dir = "{state}"
[pipeline]
threads = {threads}
[log]
format = "json"
[http]
listen = "127.0.0.1:{port}"
"#,
                state = dir.path().join("state").display(),
                port = free_port(),
            ),
        )
        .expect("worker configuration");
        let started = Instant::now();
        let worker = Worker::start(&config, &dir.path().join("worker.log"));
        let mut first_seconds = None;
        let (mut last, mut progressed) = (0, Instant::now());
        loop {
            let done = processed(&config);
            if done > 0 && first_seconds.is_none() {
                first_seconds = Some(started.elapsed().as_secs_f64());
            }
            if done >= events {
                break;
            }
            if done > last {
                (last, progressed) = (done, Instant::now());
            } else if progressed.elapsed() > STALL {
                // tansu answers a fetch that starts inside a record batch with nothing of
                // that batch (see `Batching` in src/support/broker.rs): a partition that
                // moves between members mid-stream can resume there and never see the rest
                // of the batch. Kafka returns the whole batch.
                let _ = worker.stop();
                return Err(format!(
                    "{group} ({threads} pipelines) stalled at {done} of {events} events; on \
                     tansu the likely cause is a partition resumed inside a record batch, \
                     which tansu does not serve"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let seconds = started.elapsed().as_secs_f64();
        Ok(WorkerRun {
            phases: phase_seconds(&config),
            _dir: dir,
            worker: Some(worker),
            seconds,
            first_seconds: first_seconds.unwrap_or(seconds),
        })
    }

    fn stop(mut self) -> WorkerRun {
        if let Some(worker) = self.worker.take() {
            let status = worker.stop();
            assert!(status.success(), "worker exited with {status}");
        }
        self
    }
}

/// `events` activity events of [`USERS`] users over 35 days ending a day ago, in time order,
/// keyed by user id.
fn history(events: u64) -> Vec<(String, Vec<u8>)> {
    let mut rng = Rng(17);
    let end = now_ms() - DAY;
    let span = 35 * DAY;
    (0..events)
        .map(|i| {
            let user = format!("user-{:07}", rng.below(USERS));
            let ts = end - span + (i as i128 * span as i128 / events as i128) as i64;
            let purchase = rng.below(30) == 0;
            let event = ActivityEvent {
                event_id: format!("e{i}"),
                user_id: user.clone(),
                event_type: if purchase { "purchase" } else { "app_open" }.into(),
                timestamp_ms: ts,
                session_seconds: rng.below(600) as i32,
                amount: if purchase { 20.0 } else { 0.0 },
                timezone: None,
                attributes: BTreeMap::new(),
            };
            (user, encode_event(&event, Some(1)).expect("encodes"))
        })
        .collect()
}

/// Seconds for a consumer with the worker's settings to read `expected` records.
fn raw_consume(brokers: &str, topic: &str, expected: u64) -> f64 {
    // What rekindle-kafka sets for its consumer, plus the test configuration's fetch wait.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "raw-consume-baseline")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("statistics.interval.ms", "5000")
        .set("fetch.queue.backoff.ms", "10")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("consumer");
    let started = Instant::now();
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut read = 0u64;
    let mut bytes = 0usize;
    while read < expected {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                bytes += message.payload().map_or(0, <[u8]>::len);
                read += 1;
            }
            Some(Err(e)) => eprintln!("raw consumer: {e}"),
            None => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(3600),
            "raw consume did not finish"
        );
    }
    std::hint::black_box(bytes);
    started.elapsed().as_secs_f64()
}

/// Events the worker has processed, from its /metrics (0 before it listens).
fn processed(config: &std::path::Path) -> u64 {
    let Some((_, body)) = try_http_get(config, "/metrics") else {
        return 0;
    };
    let name = "rekindle_ingest_events_processed_total{";
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Seconds per step of the worker's loop, from `rekindle_pipeline_phase_seconds_total`.
fn phase_seconds(config: &std::path::Path) -> Vec<(String, f64)> {
    let Some((_, body)) = try_http_get(config, "/metrics") else {
        return Vec::new();
    };
    let name = "rekindle_pipeline_phase_seconds_total{phase=\"";
    body.lines()
        .filter_map(|l| l.strip_prefix(name))
        .filter_map(|l| {
            let (phase, rest) = l.split_once('"')?;
            Some((phase.to_string(), rest.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// Produces [`LATENCY_USERS`] users whose lapse deadlines fall 10 to 40 s from now, and
/// returns, sorted, the seconds from each one's due time to its trigger being read.
fn trigger_latency(brokers: &str) -> Vec<f64> {
    let now = now_ms();
    let mut rng = Rng(29);
    let mut records = Vec::new();
    for i in 0..LATENCY_USERS {
        let user = format!("late-{i:05}");
        // Three active days, the last one 7 days before a deadline 10-40 s from now.
        let last = now - 7 * DAY + 10_000 + rng.below(30_000) as i64;
        for back in [2, 1, 0] {
            let event = ActivityEvent {
                event_id: format!("late-{i}-{back}"),
                user_id: user.clone(),
                event_type: "app_open".into(),
                timestamp_ms: last - back * DAY,
                session_seconds: 60,
                amount: 0.0,
                timezone: None,
                attributes: BTreeMap::new(),
            };
            records.push((
                user.clone(),
                encode_event(&event, Some(1)).expect("encodes"),
            ));
        }
    }
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "latency-reader")
        .set("auto.offset.reset", "latest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("reader");
    reader.subscribe(&["bench.triggers"]).expect("subscribe");
    // Join the group before the deadlines start passing.
    let joined = Instant::now() + Duration::from_secs(5);
    while Instant::now() < joined {
        let _ = reader.poll(Duration::from_millis(100));
    }
    produce(brokers, "bench.activity", &records, Batching::Default);
    let decoder = TriggerDecoder::new().expect("decoder");
    let mut latencies = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while (latencies.len() as u64) < LATENCY_USERS && Instant::now() < deadline {
        let Some(Ok(message)) = reader.poll(Duration::from_millis(50)) else {
            continue;
        };
        let read_at = now_ms();
        let Some(trigger) = message.payload().and_then(|p| decoder.decode(p).ok()) else {
            continue;
        };
        if trigger.user_id.starts_with("late-") && trigger.rule_id == "lapsed_7d" {
            latencies
                .entry(trigger.user_id)
                .or_insert((read_at - trigger.due_at_ms) as f64 / 1000.0);
        }
    }
    let mut sorted: Vec<f64> = latencies.into_values().collect();
    sorted.sort_by(f64::total_cmp);
    sorted
}
