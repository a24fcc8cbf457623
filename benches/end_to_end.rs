//! End to end against a real broker (a tansu process), in one run:
//!
//! 1. A topic of 4 partitions is loaded with 2,000,000 Confluent-framed Avro activity events
//!    (200,000 users over 35 days).
//! 2. **Raw consume baseline**: an rdkafka consumer with the worker's client settings reads
//!    the whole topic and discards it: the ceiling of any Kafka pipeline on this broker.
//! 3. **The worker**: `rekindle run` with the default rules, fresh state, processes the same
//!    topic; done when its metrics count every event processed. Its seconds per loop step
//!    (`rekindle_pipeline_phase_seconds_total`) show where the time went.
//! 4. **Trigger latency**: 2,000 more users whose lapse deadlines fall 10 to 40 s into the
//!    run; for each trigger, the moment it is readable on the delivery topic minus its due
//!    time (p50, p99, max), with the clock tick at its default (250 ms).
//!
//! Needs `tansu` (deploy/setup.sh installs it) and the release binary (`make bench` builds
//! it). `REKINDLE_E2E_EVENTS` changes the number of events.

#[path = "../tests/support/mod.rs"]
mod support;

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

    let dir = tempfile::tempdir().expect("temporary directory");
    // The worker's defaults (rules, batches, clock ticks, changelog), but for where things
    // are and the fetch wait the demo uses against tansu (the raw consumer uses it too).
    let config = dir.path().join("rekindle.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[kafka]
brokers = "{brokers}"
group_id = "rekindle-bench"
activity_topic = "bench.activity"
trigger_topic = "bench.triggers"
dead_letter_topic = "dead-letters"
create_topics = true
create_partitions = {PARTITIONS}
[kafka.consumer]
"fetch.wait.max.ms" = "10"
[state]
dir = "{state}"
[log]
format = "json"
[http]
listen = "127.0.0.1:{port}"
"#,
            brokers = broker.address,
            state = dir.path().join("state").display(),
            port = free_port(),
        ),
    )
    .expect("worker configuration");
    let started = Instant::now();
    let worker = Worker::start(&config, &dir.path().join("worker.log"));
    let deadline = Instant::now() + Duration::from_secs(3600);
    while processed(&config) < events {
        assert!(Instant::now() < deadline, "the worker did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    let worker_seconds = started.elapsed().as_secs_f64();
    let phases = phase_seconds(&config);

    let latencies = trigger_latency(&broker.address);
    let status = worker.stop();
    assert!(status.success(), "worker exited with {status}");

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
    println!(
        "{:<34} {:>12.0} {:>10.1}",
        "rekindle run (default rules)",
        rate(worker_seconds),
        worker_seconds
    );
    println!(
        "worker / raw consume: {:.2}",
        rate(worker_seconds) / rate(raw_seconds)
    );
    let busy: f64 = phases.iter().map(|(_, s)| s).sum();
    println!(
        "the worker's loop, seconds per step (of {worker_seconds:.1} s; the rest is start-up):"
    );
    for (phase, seconds) in &phases {
        println!(
            "  {phase:<10} {seconds:>8.1} s {:>5.1} %",
            100.0 * seconds / busy.max(f64::MIN_POSITIVE)
        );
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
