//! `rekindle tail`: prints the trigger topic as JSON lines, decoded with the trigger schema.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use rekindle_events::TriggerDecoder;
use rekindle_kafka::{source_record, NoObserver, Source};

use crate::settings::Settings;
use crate::wiring;

#[derive(Args)]
pub struct TailArgs {
    /// Topic to read; the configured trigger topic by default.
    #[arg(long)]
    topic: Option<String>,
    /// Stop after this many records.
    #[arg(long)]
    count: Option<usize>,
    /// Stop after this long in total (e.g. "90s").
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
}

pub async fn tail(settings: &Settings, args: &TailArgs) -> anyhow::Result<()> {
    let topic = args
        .topic
        .clone()
        .unwrap_or_else(|| settings.kafka.trigger_topic.clone());
    let kafka = wiring::kafka_settings(settings)?;
    // A fresh group each time: tail reads the topic from the beginning and commits nothing
    // that matters.
    let group = format!("rekindle-tail-{}", std::process::id());
    let owned: Arc<Mutex<BTreeSet<u32>>> = Arc::default();
    let source = Source::new(
        &kafka,
        &group,
        &topic,
        Arc::new(|_| Ok(None)),
        owned,
        Arc::new(NoObserver),
    )?;
    let decoder = TriggerDecoder::new()?;
    let started = Instant::now();
    let mut printed = 0usize;
    let stdout = std::io::stdout();
    loop {
        if args.duration.is_some_and(|d| started.elapsed() >= d)
            || args.count.is_some_and(|c| printed >= c)
        {
            return Ok(());
        }
        let batch = source
            .next_batch(1000, Duration::from_millis(20), Duration::from_millis(200))
            .await?;
        let mut out = stdout.lock();
        for message in &batch {
            let record = source_record(message);
            match decoder.decode(record.payload) {
                Ok(trigger) => serde_json::to_writer(&mut out, &trigger)?,
                Err(e) => serde_json::to_writer(
                    &mut out,
                    &serde_json::json!({"undecodable": e.to_string(), "partition": record.partition, "offset": record.offset}),
                )?,
            }
            out.write_all(b"\n")?;
            out.flush()?;
            printed += 1;
        }
    }
}
