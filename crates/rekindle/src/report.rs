//! `rekindle report`: the growth figures the workers keep, summed over the partitions of a
//! state directory, or computed by the engine over a replay file.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use rekindle_rules::{
    day_label, lift, ArmCounts, CohortCounts, DayCounts, Growth, RuleBook, RETENTION_DAYS,
};
use rekindle_state::Store;
use serde::Serialize;

use crate::replay;
use crate::settings::Settings;

#[derive(Clone, Copy, ValueEnum)]
enum Report {
    /// Distinct users active per day, week (7 days) and month (30 days), day by day.
    Active,
    /// New users per cohort (first active day) and how many came back on day 1, 7 and 30.
    Retention,
    /// Users per RFM segment.
    Segments,
    /// Per rule with an experiment and per arm: users triggered, users reactivated, the
    /// rate, and its lift over the holdout arm with a 95 % confidence interval.
    Lift,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// Aligned columns for people.
    Table,
    /// One JSON object per line for machines.
    Json,
}

#[derive(Args)]
pub struct ReportArgs {
    #[arg(value_enum)]
    report: Report,
    /// A worker's state directory (read-only; safe beside a running worker). Default:
    /// `state.dir`.
    #[arg(long, conflicts_with = "input")]
    state_dir: Option<PathBuf>,
    /// Run the engine over this replay file (JSON lines, as `rekindle replay` reads) and
    /// report from the result instead.
    #[arg(long)]
    input: Option<PathBuf>,
    /// With --input: at the end of the input, advance the clock to this time (ms since the
    /// epoch), which completes the days before it.
    #[arg(long, requires = "input")]
    until_ms: Option<i64>,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

/// One line of `report active --format json`: counts as of the end of `day`.
#[derive(Serialize)]
struct ActiveLine {
    day: String,
    dau: u32,
    wau: u32,
    mau: u32,
}

/// One line of `report retention --format json`; `None` (null) while the day has not ended.
#[derive(Serialize)]
struct RetentionLine {
    cohort: String,
    users: u32,
    d1: Option<u32>,
    d7: Option<u32>,
    d30: Option<u32>,
    rolling_d1: Option<u32>,
    rolling_d7: Option<u32>,
    rolling_d30: Option<u32>,
}

/// One line of `report segments --format json`.
#[derive(Serialize)]
struct SegmentLine<'a> {
    segment: &'a str,
    users: i64,
}

/// One line of `report lift --format json`.
#[derive(Serialize)]
struct LiftLine<'a> {
    rule: &'a str,
    experiment: &'a str,
    arm: &'a str,
    holdout: bool,
    users: u64,
    reactivated: u64,
    rate: Option<f64>,
    /// The arm's rate minus the holdout arm's, with its 95 % confidence interval; `None`
    /// for the holdout arm itself and where either arm has no users.
    lift: Option<f64>,
    ci_low: Option<f64>,
    ci_high: Option<f64>,
    significant: Option<bool>,
}

/// The figures of every partition of a store, added up.
struct Totals {
    days: BTreeMap<i64, DayCounts>,
    cohorts: BTreeMap<i64, CohortCounts>,
    /// Users per segment, in the configured order; `None` when segments are off.
    segments: Option<Vec<(String, i64)>>,
    /// Per (rule, experiment, arm).
    arms: BTreeMap<(String, String, String), ArmCounts>,
    /// The last day every partition's clock has passed; `None`: no partition has a clock.
    last_complete: Option<i64>,
}

pub fn report(settings: &Settings, args: &ReportArgs) -> anyhow::Result<()> {
    let rules = settings.rule_book()?;
    let segments = rules.segments();
    if matches!(args.report, Report::Lift) && rules.rules().iter().all(|r| r.experiment().is_none())
    {
        bail!("no rule declares arms: there is no experiment to report");
    }
    let growth = settings.growth()?;
    match (args.report, &growth, segments) {
        (Report::Segments, _, None) => {
            bail!("segments are off (segments.enabled = false): there are no counts to report")
        }
        (Report::Active | Report::Retention, None, _) => {
            bail!("analytics are off (analytics.enabled = false): there are no figures to report")
        }
        _ => {}
    }
    let totals = match &args.input {
        Some(input) => {
            let temp = tempfile::tempdir().context("creating a temporary state directory")?;
            replay::run_file(settings, input, args.until_ms, temp.path(), &mut |_| {})?;
            totals(growth.as_ref(), &rules, temp.path())?
        }
        None => {
            let dir = args.state_dir.as_deref().unwrap_or(&settings.state.dir);
            totals(growth.as_ref(), &rules, dir)?
        }
    };
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    match args.report {
        Report::Active => active(&mut out, &totals, args.format)?,
        Report::Retention => retention(&mut out, &totals, args.format)?,
        Report::Segments => segment_counts(&mut out, &totals, args.format)?,
        Report::Lift => lift_report(&mut out, &totals, &rules, args.format)?,
    }
    out.flush()?;
    Ok(())
}

fn totals(growth: Option<&Growth>, rules: &RuleBook, dir: &Path) -> anyhow::Result<Totals> {
    let segments = rules.segments();
    let store = Store::open_read_only(dir)
        .with_context(|| format!("opening the state directory {}", dir.display()))?;
    let mut totals = Totals {
        days: BTreeMap::new(),
        cohorts: BTreeMap::new(),
        segments: segments.map(|s| s.names().iter().map(|n| (n.clone(), 0)).collect()),
        arms: BTreeMap::new(),
        last_complete: None,
    };
    for partition in store.partitions()? {
        let Some(meta) = store.meta(partition)? else {
            continue;
        };
        if let (Some(_), Some(counts)) = (segments, totals.segments.as_mut()) {
            if meta.plan_hash != rules.plan_hash() {
                bail!(
                    "partition {partition}: its segments were counted under another [segments] or [lifecycle] configuration (a worker recomputes them when it next opens the partition)"
                );
            }
            for ((_, total), users) in counts.iter_mut().zip(meta.segment_users) {
                *total += users;
            }
        }
        let figures = store.growth(partition)?;
        for (key, counts) in figures.experiments() {
            totals.arms.entry(key.clone()).or_default().add(counts);
        }
        let Some(growth) = growth else {
            continue;
        };
        if !figures.timezone.is_empty() && figures.timezone != growth.timezone() {
            bail!(
                "partition {partition}: figures were counted in {:?}, analytics.timezone is {:?}",
                figures.timezone,
                growth.timezone()
            );
        }
        if let Some(last) = growth.last_complete_day(meta.clock_ms) {
            totals.last_complete = Some(totals.last_complete.map_or(last, |l| l.min(last)));
        }
        for (day, counts) in figures.days() {
            let sum = totals.days.entry(day).or_default();
            sum.dau += counts.dau;
            sum.wau += counts.wau;
            sum.mau += counts.mau;
        }
        for (day, counts) in figures.cohorts() {
            totals.cohorts.entry(day).or_default().add(&counts);
        }
    }
    Ok(totals)
}

fn segment_counts(out: &mut impl Write, totals: &Totals, format: Format) -> anyhow::Result<()> {
    let counts = totals.segments.as_deref().unwrap_or_default();
    let all: i64 = counts.iter().map(|(_, n)| n).sum();
    if let Format::Table = format {
        writeln!(out, "{:<16} {:>10} {:>8}", "segment", "users", "share")?;
    }
    for (segment, users) in counts {
        match format {
            Format::Json => {
                serde_json::to_writer(
                    &mut *out,
                    &SegmentLine {
                        segment,
                        users: *users,
                    },
                )?;
                writeln!(out)?;
            }
            Format::Table => {
                let share = if all > 0 {
                    format!("{:.1}%", 100.0 * *users as f64 / all as f64)
                } else {
                    "-".into()
                };
                writeln!(out, "{segment:<16} {users:>10} {share:>8}")?;
            }
        }
    }
    Ok(())
}

fn lift_report(
    out: &mut impl Write,
    totals: &Totals,
    rules: &RuleBook,
    format: Format,
) -> anyhow::Result<()> {
    if let Format::Table = format {
        writeln!(
            out,
            "{:<22} {:<16} {:>8} {:>11} {:>7} {:>8}  {:<19} verdict",
            "rule", "arm", "users", "reactivated", "rate", "lift", "95% interval"
        )?;
    }
    let mut ordered: Vec<_> = rules
        .rules()
        .iter()
        .filter_map(|r| Some((r.id(), r.experiment()?)))
        .collect();
    ordered.sort_by_key(|(id, _)| *id);
    for (rule, experiment) in ordered {
        let counts = |arm: &str| {
            let key = (
                rule.to_string(),
                experiment.id().to_string(),
                arm.to_string(),
            );
            totals.arms.get(&key).copied().unwrap_or_default()
        };
        let control = experiment
            .arms()
            .iter()
            .find(|a| a.holdout)
            .map(|a| counts(&a.name));
        for arm in experiment.arms() {
            let c = counts(&arm.name);
            let rate = (c.users > 0).then(|| c.reactivated as f64 / c.users as f64);
            let compared = match (arm.holdout, control) {
                (false, Some(h)) => lift((c.users, c.reactivated), (h.users, h.reactivated)),
                _ => None,
            };
            match format {
                Format::Json => {
                    let line = LiftLine {
                        rule,
                        experiment: experiment.id(),
                        arm: &arm.name,
                        holdout: arm.holdout,
                        users: c.users,
                        reactivated: c.reactivated,
                        rate,
                        lift: compared.map(|l| l.lift),
                        ci_low: compared.map(|l| l.low),
                        ci_high: compared.map(|l| l.high),
                        significant: compared.map(|l| l.significant()),
                    };
                    serde_json::to_writer(&mut *out, &line)?;
                    writeln!(out)?;
                }
                Format::Table => {
                    let points = |x: f64| format!("{:+.1}pp", 100.0 * x);
                    let (lift_text, interval, verdict) = match (arm.holdout, control, compared) {
                        (true, _, _) => ("-".into(), String::new(), "holdout (the reference)"),
                        (false, None, _) => ("-".into(), String::new(), "no holdout arm"),
                        (false, Some(_), None) => ("-".into(), String::new(), "no users yet"),
                        (false, Some(_), Some(l)) => (
                            points(l.lift),
                            format!("[{}, {}]", points(l.low), points(l.high)),
                            if l.significant() {
                                "significant"
                            } else {
                                "not significant"
                            },
                        ),
                    };
                    writeln!(
                        out,
                        "{:<22} {:<16} {:>8} {:>11} {:>7} {:>8}  {:<19} {verdict}",
                        rule,
                        arm.name,
                        c.users,
                        c.reactivated,
                        rate.map_or("-".into(), |r| format!("{:.1}%", 100.0 * r)),
                        lift_text,
                        interval,
                    )?;
                }
            }
        }
    }
    Ok(())
}

/// `part` as a percentage of `whole`, for people.
fn percent(part: u32, whole: u32) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.1}%", 100.0 * f64::from(part) / f64::from(whole))
    }
}

fn active(out: &mut impl Write, totals: &Totals, format: Format) -> anyhow::Result<()> {
    let Some(last) = totals.last_complete else {
        return Ok(());
    };
    // From the first day anyone was active (within the kept history) to the last complete one.
    let Some(first) = totals.days.iter().find(|(_, c)| c.dau > 0).map(|(d, _)| *d) else {
        return Ok(());
    };
    if let Format::Table = format {
        writeln!(
            out,
            "{:<10} {:>9} {:>9} {:>9} {:>10}",
            "day", "dau", "wau", "mau", "dau/mau"
        )?;
    }
    for day in first..=last {
        let c = totals.days.get(&day).copied().unwrap_or_default();
        match format {
            Format::Json => {
                let line = ActiveLine {
                    day: day_label(day),
                    dau: c.dau,
                    wau: c.wau,
                    mau: c.mau,
                };
                serde_json::to_writer(&mut *out, &line)?;
                writeln!(out)?;
            }
            Format::Table => writeln!(
                out,
                "{:<10} {:>9} {:>9} {:>9} {:>10}",
                day_label(day),
                c.dau,
                c.wau,
                c.mau,
                percent(c.dau, c.mau)
            )?,
        }
    }
    Ok(())
}

fn retention(out: &mut impl Write, totals: &Totals, format: Format) -> anyhow::Result<()> {
    let Some(last) = totals.last_complete else {
        return Ok(());
    };
    let Some(first) = totals
        .cohorts
        .iter()
        .find(|(_, c)| c.users > 0)
        .map(|(d, _)| *d)
    else {
        return Ok(());
    };
    if let Format::Table = format {
        writeln!(
            out,
            "{:<10} {:>7} {:>15} {:>15} {:>15}   rolling: {:>7} {:>7} {:>7}",
            "cohort", "users", "day 1", "day 7", "day 30", "1+", "7+", "30+"
        )?;
    }
    for cohort in first..=last {
        let c = totals.cohorts.get(&cohort).copied().unwrap_or_default();
        // A day that has not ended yet has no final figure.
        let known = |i: usize| cohort + RETENTION_DAYS[i] <= last;
        match format {
            Format::Json => {
                let value = |counts: [u32; 3], i: usize| known(i).then_some(counts[i]);
                let line = RetentionLine {
                    cohort: day_label(cohort),
                    users: c.users,
                    d1: value(c.returned, 0),
                    d7: value(c.returned, 1),
                    d30: value(c.returned, 2),
                    rolling_d1: value(c.rolling, 0),
                    rolling_d7: value(c.rolling, 1),
                    rolling_d30: value(c.rolling, 2),
                };
                serde_json::to_writer(&mut *out, &line)?;
                writeln!(out)?;
            }
            Format::Table => {
                let cell = |counts: [u32; 3], i: usize, width: usize| {
                    if !known(i) {
                        format!("{:>width$}", "")
                    } else if width > 7 {
                        format!(
                            "{:>width$}",
                            format!("{} {:>6}", counts[i], percent(counts[i], c.users))
                        )
                    } else {
                        format!("{:>width$}", percent(counts[i], c.users))
                    }
                };
                writeln!(
                    out,
                    "{:<10} {:>7} {} {} {}            {} {} {}",
                    day_label(cohort),
                    c.users,
                    cell(c.returned, 0, 15),
                    cell(c.returned, 1, 15),
                    cell(c.returned, 2, 15),
                    cell(c.rolling, 0, 7),
                    cell(c.rolling, 1, 7),
                    cell(c.rolling, 2, 7),
                )?;
            }
        }
    }
    Ok(())
}
