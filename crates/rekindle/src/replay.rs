//! `rekindle replay`: the worker's engine, state code and rules over a JSON-lines file.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use rekindle_engine::{Record, RecordKind};
use rekindle_events::{ReactivationTrigger, ReplayLine};
use rekindle_telemetry::Metrics;

use crate::settings::Settings;
use crate::wiring;

/// Lines between state commits: bounds the write-back buffer, as batches do in `run`.
const COMMIT_EVERY: usize = 10_000;
/// A replay file is one log, so it is one partition with one clock.
const PARTITION: u32 = 0;

#[derive(Args)]
pub struct ReplayArgs {
    /// JSON lines: one ActivityEvent per line, or {"tick_ms": N} to advance the clock.
    #[arg(long)]
    input: PathBuf,
    /// At the end of the input, advance the clock to this time (ms since the epoch).
    #[arg(long)]
    until_ms: Option<i64>,
    /// Keep state in this directory instead of a temporary one.
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

pub fn replay(settings: &Settings, args: &ReplayArgs) -> anyhow::Result<()> {
    let temp = tempfile::tempdir().context("creating a temporary state directory")?;
    let dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let store = wiring::open_store(settings, &dir)?;
    let mut engine = wiring::engine(
        settings,
        &args.input.display().to_string(),
        store,
        Metrics::new()?,
    )?;
    let input =
        File::open(&args.input).with_context(|| format!("opening {}", args.input.display()))?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut fired: Vec<ReactivationTrigger> = Vec::new();
    // Line numbers are offsets; a kept state directory resumes after the lines it has seen.
    for (offset, line) in BufReader::new(input).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", args.input.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let kind = match ReplayLine::parse(&line) {
            Ok(ReplayLine::Tick { tick_ms }) => RecordKind::Tick(tick_ms),
            Ok(ReplayLine::Event { event, ingest_ms }) => RecordKind::Event { event, ingest_ms },
            Err(error) => RecordKind::Unreadable(error),
        };
        engine.process(
            Record {
                partition: PARTITION,
                offset: offset as i64,
                kind,
            },
            &mut fired,
        )?;
        if offset % COMMIT_EVERY == COMMIT_EVERY - 1 {
            emit(&mut out, &mut fired)?;
            engine.commit()?;
        }
    }
    if let Some(until) = args.until_ms {
        engine.advance_clock(PARTITION, until, &mut fired)?;
    }
    emit(&mut out, &mut fired)?;
    engine.commit()?;
    out.flush()?;
    wiring::log_stats("replay finished", &engine);
    Ok(())
}

fn emit(out: &mut impl Write, fired: &mut Vec<ReactivationTrigger>) -> anyhow::Result<()> {
    for trigger in fired.drain(..) {
        serde_json::to_writer(&mut *out, &trigger)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}
