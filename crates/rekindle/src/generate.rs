//! `rekindle gen`: synthetic activity with realistic shapes: daily habits of varying
//! strength, a heavy tail of very active users, users joining over time, and cohorts that
//! lapse (some of whom come back).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rekindle_events::{encode_event, ActivityEvent, ContainerWriter};
use rekindle_kafka::{admin, Outgoing, Sink};
use tracing::info;

use crate::settings::Settings;
use crate::wiring;

const TIMEZONES: [&str; 6] = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "America/Los_Angeles",
    "Asia/Kolkata",
    "Asia/Tokyo",
];
/// Records per produce batch when writing history to a topic.
const PRODUCE_BATCH: usize = 10_000;
/// A live simulated day is sent in this many slices, so events spread through the day.
const LIVE_SLICES_PER_DAY: u32 = 10;

#[derive(Args, Clone)]
pub struct GenArgs {
    /// Number of users.
    #[arg(long, default_value_t = 1000)]
    users: u32,
    /// Days of history (or of simulated days in --live mode).
    #[arg(long, default_value_t = 45)]
    days: u32,
    /// Random seed: the same seed and arguments give the same events.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Share of users who go silent at some point (a third of them come back later).
    #[arg(long, default_value_t = 0.3)]
    lapse_fraction: f64,
    /// End of the history in ms since the epoch; now by default.
    #[arg(long)]
    end_ms: Option<i64>,
    /// Write to this file instead of producing to Kafka.
    #[arg(long)]
    output: Option<PathBuf>,
    /// With --output: `jsonl` (JSON lines, the replay format) or `avro` (an Avro object
    /// container file with activity_event.avsc in its header).
    #[arg(long, value_enum, default_value = "jsonl", requires = "output")]
    file_format: FileFormat,
    /// Producing history to a topic: at most this many events per second (default: as
    /// fast as the broker acknowledges them).
    #[arg(long, conflicts_with_all = ["output", "live"])]
    rate: Option<f64>,
    /// Topic to produce Avro records to; the configured activity topic by default.
    #[arg(long)]
    topic: Option<String>,
    /// Frame Avro records in the Confluent wire format with this schema id.
    #[arg(long)]
    schema_id: Option<u32>,
    /// Real-time mode: one simulated day every --day-length, events stamped with the wall
    /// clock, for --days days.
    #[arg(long)]
    live: bool,
    /// Length of a simulated day in --live mode.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    day_length: Duration,
    /// With Kafka output, also write one malformed record (not Avro) after every N events,
    /// to see dead-lettering at work.
    #[arg(long)]
    malformed_every: Option<usize>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum FileFormat {
    Jsonl,
    Avro,
}

/// One simulated user's habits.
struct Persona {
    user_id: String,
    timezone: &'static str,
    /// Probability of being active on a given day.
    daily_probability: f64,
    /// Preferred hour of day, as a fraction of the day.
    preferred_time: f64,
    /// Heavy-tailed: most users do one or two things a day, a few do dozens.
    events_per_active_day: u32,
    first_day: u32,
    /// Silent from `lapse.0` (inclusive) to `lapse.1` (exclusive).
    lapse: Option<(u32, u32)>,
}

impl Persona {
    fn new(rng: &mut StdRng, index: u32, days: u32, lapse_fraction: f64) -> Persona {
        let u: f64 = rng.random();
        let tail: f64 = rng.random::<f64>().max(1e-9);
        let events = (1.0 / tail).powf(1.0 / 1.5).floor().min(50.0) as u32;
        let first_day = rng.random_range(0..(days * 3 / 5).max(1));
        let lapse = if rng.random::<f64>() < lapse_fraction && first_day + 4 < days {
            let start = rng.random_range(first_day + 3..days);
            let end = if rng.random::<f64>() < 1.0 / 3.0 {
                start + rng.random_range(3..20)
            } else {
                u32::MAX
            };
            Some((start, end))
        } else {
            None
        };
        Persona {
            user_id: format!("user-{index:07}"),
            timezone: TIMEZONES[rng.random_range(0..TIMEZONES.len())],
            daily_probability: 0.15 + 0.8 * u,
            preferred_time: rng.random(),
            events_per_active_day: events.max(1),
            first_day,
            lapse,
        }
    }

    fn active_on(&self, rng: &mut StdRng, day: u32) -> bool {
        if day < self.first_day || self.lapse.is_some_and(|(s, e)| day >= s && day < e) {
            return false;
        }
        day == self.first_day || rng.random::<f64>() < self.daily_probability
    }

    /// The user's events of one day that starts at `day_start_ms` and lasts `day_ms`.
    fn events(
        &self,
        rng: &mut StdRng,
        day_start_ms: i64,
        day_ms: i64,
        serial: &mut u64,
    ) -> Vec<ActivityEvent> {
        let n = rng.random_range(1..=self.events_per_active_day);
        (0..n)
            .map(|_| {
                let jitter = rng.random_range(-0.08..0.08);
                let at = (self.preferred_time + jitter).rem_euclid(1.0);
                let timestamp_ms = day_start_ms + (at * day_ms as f64) as i64;
                *serial += 1;
                let roll: f64 = rng.random();
                let (event_type, session_seconds, amount) = if roll < 0.03 {
                    (
                        "purchase",
                        0,
                        (rng.random_range(1.0..100.0_f64) * 100.0).round() / 100.0,
                    )
                } else if roll < 0.5 {
                    ("session_end", rng.random_range(10..900), 0.0)
                } else {
                    ("app_open", 0, 0.0)
                };
                ActivityEvent {
                    event_id: format!("evt-{serial:010}"),
                    user_id: self.user_id.clone(),
                    event_type: event_type.to_string(),
                    timestamp_ms,
                    session_seconds,
                    amount,
                    timezone: Some(self.timezone.to_string()),
                    attributes: BTreeMap::new(),
                }
            })
            .collect()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub fn generate(settings: &Settings, args: &GenArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.lapse_fraction) {
        bail!("--lapse-fraction must be between 0 and 1");
    }
    if args.users == 0 || args.days == 0 {
        bail!("--users and --days must be positive");
    }
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        bail!("--rate must be a positive number of events per second");
    }
    let mut rng = StdRng::seed_from_u64(args.seed);
    let personas: Vec<Persona> = (0..args.users)
        .map(|i| Persona::new(&mut rng, i, args.days, args.lapse_fraction))
        .collect();
    if args.live {
        return wiring::runtime()?.block_on(live(settings, args, &personas, &mut rng));
    }
    let day_ms = rekindle_rules::DAY_MS;
    let end = args.end_ms.unwrap_or_else(now_ms);
    let start = end - i64::from(args.days) * day_ms;
    let mut serial = 0u64;
    let mut events = Vec::new();
    for day in 0..args.days {
        let day_start = start + i64::from(day) * day_ms;
        for p in &personas {
            if p.active_on(&mut rng, day) {
                events.extend(p.events(&mut rng, day_start, day_ms, &mut serial));
            }
        }
    }
    events.retain(|e| e.timestamp_ms < end);
    // Time order across users, so every partition's log is in time order too.
    events.sort_by(|a, b| (a.timestamp_ms, &a.event_id).cmp(&(b.timestamp_ms, &b.event_id)));
    match (&args.output, args.file_format) {
        (Some(path), FileFormat::Jsonl) => write_json_lines(path, &events),
        (Some(path), FileFormat::Avro) => write_avro(path, &events),
        (None, _) => wiring::runtime()?.block_on(produce(settings, args, &events)),
    }
}

fn write_json_lines(path: &PathBuf, events: &[ActivityEvent]) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    for e in events {
        serde_json::to_writer(&mut out, e)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    info!(events = events.len(), path = %path.display(), "history written");
    Ok(())
}

fn write_avro(path: &PathBuf, events: &[ActivityEvent]) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = ContainerWriter::new(BufWriter::new(file))?;
    for e in events {
        out.append(e)?;
    }
    out.finish()?
        .flush()
        .with_context(|| format!("writing {}", path.display()))?;
    info!(events = events.len(), path = %path.display(), "history written as an Avro container file");
    Ok(())
}

/// The topic to write to (created first when `kafka.create_topics` is set) and a producer.
async fn open_topic(settings: &Settings, args: &GenArgs) -> anyhow::Result<(String, Sink)> {
    let topic = args
        .topic
        .clone()
        .unwrap_or_else(|| settings.kafka.activity_topic.clone());
    let kafka = wiring::kafka_settings(settings)?;
    if settings.kafka.create_topics {
        admin::ensure_topics(&kafka, &[(&topic, settings.kafka.create_partitions)], &[]).await?;
    }
    Ok((
        topic,
        Sink::new(&kafka, std::sync::Arc::new(rekindle_kafka::NoObserver))?,
    ))
}

async fn produce(
    settings: &Settings,
    args: &GenArgs,
    events: &[ActivityEvent],
) -> anyhow::Result<()> {
    let (topic, sink) = open_topic(settings, args).await?;
    let mut sent = 0;
    // At a target rate, small batches sent on schedule: a tenth of a second's worth each.
    let batch = args.rate.map_or(PRODUCE_BATCH, |rate| {
        ((rate / 10.0).ceil() as usize).clamp(1, PRODUCE_BATCH)
    });
    let started = std::time::Instant::now();
    let mut produced = 0usize;
    for chunk in events.chunks(batch) {
        if let Some(rate) = args.rate {
            let due = Duration::from_secs_f64(produced as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        send(&sink, &topic, chunk, args, &mut sent).await?;
        produced += chunk.len();
    }
    let seconds = started.elapsed().as_secs_f64();
    info!(
        events = events.len(),
        topic = %topic,
        seconds,
        events_per_second = events.len() as f64 / seconds.max(1e-9),
        "history produced"
    );
    Ok(())
}

/// Encodes and sends `events`; `sent` counts events across calls, for `--malformed-every`.
async fn send(
    sink: &Sink,
    topic: &str,
    events: &[ActivityEvent],
    args: &GenArgs,
    sent: &mut usize,
) -> anyhow::Result<()> {
    let mut encoded = Vec::with_capacity(events.len());
    for e in events {
        encoded.push((e.user_id.as_str(), encode_event(e, args.schema_id)?));
        *sent += 1;
        if args
            .malformed_every
            .is_some_and(|n| n > 0 && (*sent).is_multiple_of(n))
        {
            encoded.push((
                e.user_id.as_str(),
                b"this is not an Avro ActivityEvent".to_vec(),
            ));
        }
    }
    sink.send_all(encoded.iter().map(|(key, payload)| Outgoing {
        topic,
        key: Some(key.as_bytes()),
        payload,
        headers: Vec::new(),
    }))
    .await?;
    Ok(())
}

async fn live(
    settings: &Settings,
    args: &GenArgs,
    personas: &[Persona],
    rng: &mut StdRng,
) -> anyhow::Result<()> {
    let (topic, sink) = open_topic(settings, args).await?;
    let day_ms = i64::try_from(args.day_length.as_millis())
        .unwrap_or(1000)
        .max(1);
    let mut serial = 0u64;
    let mut sent = 0;
    let mut timer = tokio::time::interval(args.day_length / LIVE_SLICES_PER_DAY);
    let start = now_ms();
    for day in 0..args.days {
        let day_start = start + i64::from(day) * day_ms;
        let mut events: Vec<ActivityEvent> = Vec::new();
        for p in personas {
            if p.active_on(rng, day) {
                events.extend(p.events(rng, day_start, day_ms, &mut serial));
            }
        }
        events.sort_by_key(|e| e.timestamp_ms);
        let produced = events.len();
        // Each event is sent once its moment of the simulated day has come, stamped "now".
        let mut pending = events.into_iter().peekable();
        for slice in 0..LIVE_SLICES_PER_DAY {
            timer.tick().await;
            let now = now_ms();
            let last_slice = slice + 1 == LIVE_SLICES_PER_DAY;
            let mut due: Vec<ActivityEvent> = Vec::new();
            while let Some(mut e) = pending.next_if(|e| last_slice || e.timestamp_ms <= now) {
                e.timestamp_ms = now;
                due.push(e);
            }
            send(&sink, &topic, &due, args, &mut sent).await?;
        }
        info!(day, events = produced, "live day produced");
    }
    Ok(())
}
