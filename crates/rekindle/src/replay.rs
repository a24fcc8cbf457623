//! `rekindle replay`: the worker's engine, state code and rules over a JSON-lines file.
//! `--rules` tries other rules on the same history; `--compare` diffs two rule files.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use rekindle_engine::{Emitted, Record, RecordKind};
use rekindle_events::ReplayLine;
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
    /// Use the [rules.*], [lifecycle] and [policy] of this file instead of the configured
    /// ones: try a rule change on history before it goes live.
    #[arg(long, conflicts_with = "compare")]
    rules: Option<PathBuf>,
    /// Also print the decisions that did not send a trigger (audit records), in order.
    #[arg(long)]
    audit: bool,
    /// Replay twice, with OLD and NEW rule files, and print per rule how many triggers NEW
    /// adds and removes, and why.
    #[arg(long, num_args = 2, value_names = ["OLD", "NEW"])]
    compare: Option<Vec<PathBuf>>,
}

pub fn replay(settings: &Settings, args: &ReplayArgs) -> anyhow::Result<()> {
    if let Some(files) = &args.compare {
        let [old, new] = files.as_slice() else {
            anyhow::bail!("--compare takes two rule files");
        };
        return compare(settings, args, old, new);
    }
    let settings = match &args.rules {
        Some(path) => settings.with_rules_file(path)?,
        None => settings.clone(),
    };
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut failed: Option<anyhow::Error> = None;
    let temp = tempfile::tempdir().context("creating a temporary state directory")?;
    let dir = args.state_dir.as_deref().unwrap_or(temp.path());
    run_file(&settings, &args.input, args.until_ms, dir, &mut |emitted| {
        if failed.is_some() {
            return;
        }
        if let Err(e) = print(&mut out, emitted, args.audit) {
            failed = Some(e);
        }
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    out.flush()?;
    Ok(())
}

/// Decisions in the order they were made: triggers and audit records interleave as the
/// engine produced them within each commit interval (triggers first, then audit records).
fn print(out: &mut impl Write, emitted: &Emitted, audit: bool) -> anyhow::Result<()> {
    for trigger in &emitted.triggers {
        serde_json::to_writer(&mut *out, trigger)?;
        out.write_all(b"\n")?;
    }
    if audit {
        for record in &emitted.audit {
            serde_json::to_writer(&mut *out, record)?;
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

/// Runs the engine over `input` with its state in `dir`, handing what it emits to `sink` at
/// every commit; at the end the clock moves to `until_ms` if given.
pub fn run_file(
    settings: &Settings,
    input: &Path,
    until_ms: Option<i64>,
    dir: &Path,
    sink: &mut dyn FnMut(&Emitted),
) -> anyhow::Result<()> {
    // No changelog behind a replay: RocksDB's log keeps its commits.
    let store = wiring::open_store(settings, dir, true)?;
    let mut engine = wiring::engine(
        settings,
        &input.display().to_string(),
        store,
        Metrics::new()?,
    )?;
    let path = input;
    let input = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut emitted = Emitted::default();
    // Line numbers are offsets; a kept state directory resumes after the lines it has seen.
    for (offset, line) in BufReader::new(input).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
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
            &mut emitted,
        )?;
        if offset % COMMIT_EVERY == COMMIT_EVERY - 1 {
            sink(&emitted);
            emitted.clear();
            engine.commit(&[])?;
        }
    }
    if let Some(until) = until_ms {
        engine.advance_clock(PARTITION, until, &mut emitted)?;
    }
    sink(&emitted);
    engine.commit(&[])?;
    wiring::log_stats("replay finished", &engine);
    Ok(())
}

/// What one replay decided about each trigger id: `sent`, or the reason it was not.
type Outcomes = BTreeMap<(String, String), String>;

fn outcomes(settings: &Settings, args: &ReplayArgs) -> anyhow::Result<Outcomes> {
    let mut found = Outcomes::new();
    let temp = tempfile::tempdir().context("creating a temporary state directory")?;
    run_file(
        settings,
        &args.input,
        args.until_ms,
        temp.path(),
        &mut |emitted| {
            for t in &emitted.triggers {
                found.insert((t.rule_id.clone(), t.trigger_id.clone()), "sent".into());
            }
            for a in &emitted.audit {
                // A deferral is followed by its final outcome; keep the last word.
                let key = (a.trigger.rule_id.clone(), a.trigger.trigger_id.clone());
                let final_word = found.get(&key).is_some_and(|w| w == "sent");
                if !final_word {
                    found.insert(key, a.reason.clone());
                }
            }
        },
    )?;
    Ok(found)
}

#[derive(Default)]
struct RuleDiff {
    old_sent: usize,
    new_sent: usize,
    /// Sent by NEW only, by what OLD did with them.
    added: BTreeMap<String, usize>,
    /// Sent by OLD only, by what NEW did with them.
    removed: BTreeMap<String, usize>,
}

fn compare(settings: &Settings, args: &ReplayArgs, old: &Path, new: &Path) -> anyhow::Result<()> {
    let old_outcomes = outcomes(&settings.with_rules_file(old)?, args)?;
    let new_outcomes = outcomes(&settings.with_rules_file(new)?, args)?;
    let mut rules: BTreeMap<String, RuleDiff> = BTreeMap::new();
    let keys: std::collections::BTreeSet<&(String, String)> =
        old_outcomes.keys().chain(new_outcomes.keys()).collect();
    const NOT_FIRED: &str = "not_fired";
    for key in keys {
        let before = old_outcomes.get(key).map_or(NOT_FIRED, String::as_str);
        let after = new_outcomes.get(key).map_or(NOT_FIRED, String::as_str);
        let diff = rules.entry(key.0.clone()).or_default();
        diff.old_sent += usize::from(before == "sent");
        diff.new_sent += usize::from(after == "sent");
        if before != "sent" && after == "sent" {
            *diff.added.entry(before.to_string()).or_default() += 1;
        }
        if before == "sent" && after != "sent" {
            *diff.removed.entry(after.to_string()).or_default() += 1;
        }
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    writeln!(out, "OLD {}  NEW {}", old.display(), new.display())?;
    writeln!(
        out,
        "{:<24} {:>9} {:>9} {:>7} {:>8}  why",
        "rule", "old sent", "new sent", "added", "removed"
    )?;
    let reasons = |m: &BTreeMap<String, usize>| {
        m.iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (rule, d) in &rules {
        let added: usize = d.added.values().sum();
        let removed: usize = d.removed.values().sum();
        let mut why = Vec::new();
        if added > 0 {
            why.push(format!("added (was: {})", reasons(&d.added)));
        }
        if removed > 0 {
            why.push(format!("removed (now: {})", reasons(&d.removed)));
        }
        writeln!(
            out,
            "{rule:<24} {:>9} {:>9} {:>7} {:>8}  {}",
            d.old_sent,
            d.new_sent,
            added,
            removed,
            why.join("; ")
        )?;
    }
    Ok(())
}
