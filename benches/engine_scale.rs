//! The engine at scale, without a broker: Avro activity for N users streamed from a file
//! through the engine with the full default rule set, committing every 200,000 records or
//! 50,000 changed profiles, whichever comes first, as the worker does under load. One child
//! process per point, so each point's peak RSS is its own.
//!
//! `make bench` runs it after the micro-benchmarks and prints one table row per point:
//! events/s on one core (the engine is single-threaded), CPU seconds, peak RSS, and state
//! bytes per user on disk after a full compaction. docs/performance.md explains the figures.
//!
//! Growth analytics (`[analytics]` and `[segments]`) are on, as in the worker by default; a
//! point ending in `:off` runs without them, and one ending in `:growth` with the growth
//! figures but without RFM segments, so their costs are differences between rows.
//!
//! The store logs its writes in RocksDB's write-ahead log, as the worker's does by default;
//! `REKINDLE_SCALE_WAL=0` runs it without, as `state.write_ahead_log = false` does.
//!
//! `REKINDLE_SCALE_COMMIT_RECORDS` commits every that many records instead of 200,000
//! (`pipeline.commit_max_records`), `REKINDLE_SCALE_COMMIT_PROFILES` once that many
//! profiles changed instead of 50,000 (`pipeline.commit_max_profiles`, checked every 5,000
//! records as the worker checks after each batch).
//!
//! `REKINDLE_SCALE_PARTITIONS` spreads the users over that many partitions by a hash of
//! their ids (one by default), as a keyed producer does; the engine still processes them
//! on one thread, in the file's order.
//!
//! "CPU s" is the process's CPU time over the timed part, RocksDB's flush and compaction
//! threads included: the seconds column is the engine's thread.
//!
//! `REKINDLE_SCALE_PROFILE_CACHE` sets `state.profile_cache_users` and
//! `REKINDLE_SCALE_PROFILE_BYTES` `state.profile_cache_bytes` (the worker's defaults
//! otherwise). `REKINDLE_SCALE_POINTS` overrides the points, e.g. `100000:5000000,1000000:5000000:off`
//! (users:events[:off|:growth]); `REKINDLE_SCALE_DIR` where files and state go (a temporary directory by
//! default).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rekindle_engine::{Emitted, Engine, EngineConfig, Record, RecordKind};
use rekindle_events::{encode_event, ActivityEvent, EventDecoder};
use rekindle_rules::{Growth, GrowthConfig};
use rekindle_state::{Store, StoreOptions};
use rekindle_telemetry::Metrics;

mod support;
use support::rule_book_with;

/// The worker's allocator, so the figures are the worker's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DAY: i64 = 86_400_000;
/// 2026-01-01T00:00:00Z
const T0: i64 = 1_767_225_600_000;
/// Days of history every point spans: the rules' longest lookback.
const DAYS: i64 = 35;
/// Records per state commit at most: the worker's default `pipeline.commit_max_records`.
const COMMIT_RECORDS: usize = 200_000;
/// Changed profiles per state commit at most: the worker's default
/// `pipeline.commit_max_profiles`. At 1M users it comes first, after about 55,000 records;
/// the worker's 1 s `pipeline.commit_interval` is not modelled.
const COMMIT_PROFILES: usize = 50_000;

/// The worker's default `pipeline.batch_max_records`: how often it checks the profiles bound.
const BATCH_RECORDS: u64 = 5_000;

/// Records per commit: `REKINDLE_SCALE_COMMIT_RECORDS`, or the worker's default.
fn commit_records() -> usize {
    env_number("REKINDLE_SCALE_COMMIT_RECORDS")
        .filter(|n| *n > 0)
        .unwrap_or(COMMIT_RECORDS)
}

/// Changed profiles per commit: `REKINDLE_SCALE_COMMIT_PROFILES`, or the worker's default.
fn commit_profiles() -> usize {
    env_number("REKINDLE_SCALE_COMMIT_PROFILES").unwrap_or(COMMIT_PROFILES)
}
const DEFAULT_POINTS: &str = "100000:5000000,1000000:5000000,1000000:5000000:off,10000000:5000000";
const TIMEZONES: [&str; 4] = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo"];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--point") {
        let field = |i: usize| {
            args.get(at + i)
                .expect("--point users events file state on|off|growth")
        };
        let users: u64 = field(1).parse().expect("users");
        let events: u64 = field(2).parse().expect("events");
        let (growth, segments) = match field(5).as_str() {
            "on" => (true, true),
            "growth" => (true, false),
            "off" => (false, false),
            other => panic!("--point: analytics must be on, growth or off, not {other}"),
        };
        run_point(
            users,
            events,
            Path::new(field(3)),
            Path::new(field(4)),
            growth,
            segments,
        );
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass nothing: only a
    // bench run does the work.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let points = std::env::var("REKINDLE_SCALE_POINTS").unwrap_or_else(|_| DEFAULT_POINTS.into());
    let scratch = tempfile::tempdir().expect("temporary directory");
    let dir = std::env::var("REKINDLE_SCALE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| scratch.path().to_path_buf());
    std::fs::create_dir_all(&dir).expect("scale directory");
    println!();
    println!(
        "engine at scale: {DAYS} days of history, default rules, a commit every {} records or {} changed profiles, one core",
        commit_records(),
        commit_profiles()
    );
    println!(
        "{:>10} {:>10} {:>9} {:>12} {:>10} {:>8} {:>12} {:>14} {:>14}",
        "users",
        "events",
        "analytics",
        "events/s",
        "seconds",
        "CPU s",
        "peak RSS MiB",
        "users w/ state",
        "disk B/user"
    );
    for point in points.split(',').filter(|p| !p.is_empty()) {
        let fields: Vec<&str> = point.split(':').collect();
        let parsed = match fields.as_slice() {
            [u, e] => Some((u, e, "on")),
            [u, e, "off"] => Some((u, e, "off")),
            [u, e, "growth"] => Some((u, e, "growth")),
            _ => None,
        }
        .and_then(|(u, e, a)| Some((u.parse::<u64>().ok()?, e.parse::<u64>().ok()?, a)));
        let (users, events, analytics) =
            parsed.expect("REKINDLE_SCALE_POINTS: users:events[:off|:growth][,...]");
        let file = dir.join(format!("activity-{users}-{events}.avro"));
        if !file.exists() {
            generate(users, events, &file);
        }
        let state = dir.join(format!("state-{users}-{events}"));
        let _ = std::fs::remove_dir_all(&state);
        let output = Command::new(std::env::current_exe().expect("own path"))
            .args(["--point", &users.to_string(), &events.to_string()])
            .arg(&file)
            .arg(&state)
            .arg(analytics)
            .output()
            .expect("run a point");
        assert!(
            output.status.success(),
            "point {point} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let line = String::from_utf8_lossy(&output.stdout);
        let figures: BTreeMap<String, f64> =
            serde_json::from_str(line.trim()).expect("point figures");
        let f = |k: &str| figures.get(k).copied().unwrap_or(f64::NAN);
        println!(
            "{:>10} {:>10} {:>9} {:>12.0} {:>10.1} {:>8.1} {:>12.0} {:>14.0} {:>14.1}",
            users,
            events,
            analytics,
            f("events") / f("seconds"),
            f("seconds"),
            f("cpu_seconds"),
            f("peak_rss_bytes") / 1_048_576.0,
            f("users_with_state"),
            f("sst_bytes") / f("users_with_state"),
        );
        let _ = std::fs::remove_dir_all(&state);
    }
}

/// Writes `events` Confluent-framed Avro events, each preceded by its length (u32 LE), in
/// time order over [`DAYS`] days. Half the events go to users picked uniformly (so most
/// users have state), half to a heavy tail of very active users; each user keeps a
/// preferred time zone.
fn generate(users: u64, events: u64, path: &Path) {
    let mut rng = StdRng::seed_from_u64(7);
    let mut out = BufWriter::new(File::create(path).expect("create activity file"));
    let span = DAYS * DAY;
    for i in 0..events {
        let user = if rng.random::<bool>() {
            rng.random_range(0..users)
        } else {
            // Density falling as x^(-2/3): a few users do most of this half.
            let r: f64 = rng.random();
            ((r * r * r) * users as f64) as u64
        };
        let ts = T0 + (i as i128 * span as i128 / events as i128) as i64;
        let roll: f64 = rng.random();
        let (event_type, session_seconds, amount) = if roll < 0.03 {
            (
                "purchase",
                0,
                (rng.random_range(100..10_000) as f64) / 100.0,
            )
        } else if roll < 0.5 {
            ("session_end", rng.random_range(10..900), 0.0)
        } else {
            ("app_open", 0, 0.0)
        };
        let event = ActivityEvent {
            event_id: format!("evt-{i:010}"),
            user_id: format!("user-{user:08}"),
            event_type: event_type.into(),
            timestamp_ms: ts,
            session_seconds,
            amount,
            timezone: Some(TIMEZONES[(user % TIMEZONES.len() as u64) as usize].into()),
            attributes: BTreeMap::new(),
        };
        let payload = encode_event(&event, Some(1)).expect("encode");
        out.write_all(&(payload.len() as u32).to_le_bytes())
            .expect("write");
        out.write_all(&payload).expect("write");
    }
    out.flush().expect("flush activity file");
}

/// Processes the file and prints its figures as one JSON object.
fn run_point(users: u64, events: u64, file: &Path, state: &Path, growth: bool, segments: bool) {
    let mut options = StoreOptions {
        write_ahead_log: std::env::var("REKINDLE_SCALE_WAL").map_or(true, |v| v != "0"),
        ..StoreOptions::default()
    };
    if let Some(users) = env_number("REKINDLE_SCALE_PROFILE_CACHE") {
        options.profile_cache_users = users;
    }
    if let Some(bytes) = env_number("REKINDLE_SCALE_PROFILE_BYTES") {
        options.profile_cache_bytes = bytes;
    }
    let store = Store::open(state, &options).expect("store");
    let config = EngineConfig {
        topic: "activity".into(),
        rules: rule_book_with(segments),
        decoder: EventDecoder::new(Vec::new(), 1 << 20).expect("decoder"),
        max_future_skew_ms: 300_000,
        growth: Growth::new(&GrowthConfig {
            enabled: growth,
            ..GrowthConfig::default()
        })
        .expect("default analytics are valid"),
    };
    let partitions = env_number("REKINDLE_SCALE_PARTITIONS").unwrap_or(1).max(1);
    // Outside the timed part: which partition each record's user hashes to.
    let partition_of =
        (partitions > 1).then(|| partition_of_each(file, partitions, &config.decoder));
    let mut engine = Engine::new(store.clone(), config, Metrics::new().expect("metrics"));
    let mut input = BufReader::with_capacity(1 << 20, File::open(file).expect("activity file"));
    let mut payload = Vec::with_capacity(512);
    let mut out = Emitted::default();
    let mut processed: u64 = 0;
    let commit = commit_records() as u64;
    let mut triggers: u64 = 0;
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    let mut next_offset = vec![0i64; partitions];
    let commit_profiles = commit_profiles();
    let mut since_commit = 0u64;
    while read_record(&mut input, &mut payload) {
        let partition = partition_of.as_ref().map_or(0, |p| p[processed as usize]);
        let record = Record {
            partition: partition as u32,
            offset: next_offset[partition],
            kind: RecordKind::Avro {
                payload: &payload,
                timestamp_ms: None,
            },
        };
        next_offset[partition] += 1;
        engine.process(record, &mut out).expect("process");
        processed += 1;
        since_commit += 1;
        // As the worker decides, once per batch.
        if since_commit >= commit
            || (processed.is_multiple_of(BATCH_RECORDS)
                && engine.dirty_profiles() >= commit_profiles)
        {
            since_commit = 0;
            engine.commit(&[]).expect("commit");
            triggers += out.triggers.len() as u64;
            out.clear();
        }
    }
    engine.commit(&[]).expect("commit");
    triggers += out.triggers.len() as u64;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    assert_eq!(processed, events, "the file holds the point's events");
    // Before the compaction below, which is the benchmark's, not the worker's.
    let peak_rss_bytes = peak_rss_bytes();
    let (memtable_bytes, table_reader_bytes, block_cache_bytes) =
        store.memory_bytes().expect("memory figures");
    let cached_profiles = engine.cached_profiles();
    drop(engine);
    store.compact().expect("compact");
    let sst_bytes = store.sst_bytes().expect("sst size");
    let users_with_state = store.stats().expect("stats").profiles_estimate;
    println!(
        "{}",
        serde_json::json!({
            "users": users,
            "events": processed,
            "seconds": seconds,
            "cpu_seconds": cpu,
            "partitions": partitions,
            "triggers": triggers,
            "peak_rss_bytes": peak_rss_bytes,
            "rss_bytes": rss_bytes(),
            "memtable_bytes": memtable_bytes,
            "table_reader_bytes": table_reader_bytes,
            "block_cache_bytes": block_cache_bytes,
            "cached_profiles": cached_profiles,
            "sst_bytes": sst_bytes,
            "users_with_state": users_with_state,
        })
    );
}

fn env_number(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Reads the next length-prefixed record into `payload`; false at the end of the file.
fn read_record(input: &mut BufReader<File>, payload: &mut Vec<u8>) -> bool {
    if input.fill_buf().map(|b| b.is_empty()).unwrap_or(true) {
        return false;
    }
    let mut len = [0u8; 4];
    input.read_exact(&mut len).expect("length");
    payload.resize(u32::from_le_bytes(len) as usize, 0);
    input.read_exact(payload).expect("payload");
    true
}

/// Each record's partition, by a hash of its user id, as a keyed producer spreads users.
fn partition_of_each(file: &Path, partitions: usize, decoder: &EventDecoder) -> Vec<usize> {
    use std::hash::{Hash, Hasher};
    let mut input = BufReader::with_capacity(1 << 20, File::open(file).expect("activity file"));
    let mut payload = Vec::new();
    let mut out = Vec::new();
    while read_record(&mut input, &mut payload) {
        let event = decoder.decode(&payload).expect("generated events decode");
        let mut hasher = std::hash::DefaultHasher::new();
        event.user_id.hash(&mut hasher);
        out.push((hasher.finish() % partitions as u64) as usize);
    }
    out
}

/// CPU time the process has used, all threads (RocksDB's background work included).
fn cpu_seconds() -> f64 {
    // utime and stime, the 14th and 15th fields, in clock ticks of 1/100 s; the command
    // name before them may hold spaces, so count from its closing parenthesis.
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.get(s.rfind(')')? + 2..)?.to_string();
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks =
                fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(f64::NAN)
}

/// The process's high-water resident set (`VmHWM`), in bytes.
fn peak_rss_bytes() -> u64 {
    status_bytes("VmHWM:")
}

/// The process's resident set now (`VmRSS`), in bytes.
fn rss_bytes() -> u64 {
    status_bytes("VmRSS:")
}

fn status_bytes(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
