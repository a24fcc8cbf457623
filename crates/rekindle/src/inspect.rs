//! `rekindle inspect`: one user's state as a worker's RocksDB holds it, read-only (a running
//! worker may keep writing; this reads a consistent view as of opening).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use rekindle_rules::RuleKey;
use rekindle_state::Store;
use serde_json::json;

use crate::settings::Settings;

#[derive(Args)]
pub struct InspectArgs {
    /// The user id to look up.
    #[arg(long)]
    user: String,
    /// The worker's state directory; `state.dir` from the configuration by default.
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

fn time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

pub fn inspect(settings: &Settings, args: &InspectArgs) -> anyhow::Result<()> {
    let dir = args.state_dir.clone().unwrap_or(settings.state.dir.clone());
    let store = Store::open_read_only(&dir)
        .with_context(|| format!("opening state in {} read-only", dir.display()))?;
    let book = settings.rule_book()?;
    let mut found = false;
    for partition in store.partitions()? {
        let Some(profile) = store.profile(partition, &args.user)? else {
            continue;
        };
        found = true;
        let clock = store.meta(partition)?.map_or(0, |m| m.clock_ms);
        let stage = book.lifecycle().stage_at(&profile, clock);
        // Where the user's timer entry stands: counted steps move it on from the profile's.
        let timer = book.catch_up(&mut profile.clone(), clock);
        let pending: Vec<_> = book
            .pending(&profile, clock)
            .into_iter()
            .map(|(rule, due)| json!({"rule": rule, "due_at": time(due), "due_at_ms": due}))
            .collect();
        // As of the clock, with the scores behind it (the stored one is as of the last
        // evaluation: changes since were counted by timer steps without the profile).
        let segment = book.segments().and_then(|segments| {
            let scores = segments.scores(&profile, clock)?;
            let name = segments.name(segments.segment_at(&profile, clock)?)?;
            Some(json!({"segment": name, "r": scores.r, "f": scores.f, "m": scores.m}))
        });
        // Profiles hold rules by key: the configuration names them.
        let rule = |key: RuleKey| {
            book.rule_name(key)
                .map_or_else(|| key.to_string(), str::to_string)
        };
        let decisions: Vec<_> = profile
            .recent
            .iter()
            .map(|d| json!({"rule": rule(d.rule), "at": time(d.at_ms), "outcome": d.verdict.label()}))
            .collect();
        let report = json!({
            "user_id": args.user,
            "partition": partition,
            "pipeline_clock": time(clock),
            "lifecycle_stage": stage.map_or("none", |s| s.as_str()),
            "stored_stage": profile.stage.map(|m| json!({"stage": m.stage.as_str(), "since": time(m.since_ms)})),
            "holdout_group": book.holdout_group(&args.user).as_str(),
            "segment": segment,
            "first_active": time(profile.first_active_ms),
            "last_active": time(profile.last_active_ms),
            "timezone": profile.timezone,
            "opted_out": profile.opted_out,
            "timer": timer.map(time),
            "next_evaluation": profile.wake_at_ms.map(time),
            "pending": pending,
            "deferred": profile.deferred.as_ref().map(|d| json!({
                "rule": d.trigger.rule_id, "trigger_id": d.trigger.trigger_id, "release_at": time(d.release_ms)
            })),
            "attribution": profile.attribution.as_ref().map(|a| json!({
                "rule": rule(a.rule), "group": a.group.as_str(), "since": time(a.at_ms)
            })),
            "rules": profile.rules.iter().map(|m| json!({
                "rule": rule(m.rule), "last_episode": time(m.episode_ms), "fired_at": time(m.fired_at_ms),
                "last_sent": m.last_sent_ms.map(time)
            })).collect::<Vec<_>>(),
            "recent_decisions": decisions,
            "activity_buckets": profile.buckets.iter().map(|b| json!({
                "start": time(b.index.saturating_mul(book.windows().width_ms())),
                "events": b.events, "session_seconds": b.session_seconds, "amount": b.amount
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if !found {
        anyhow::bail!("no state for user {:?} in {}", args.user, dir.display());
    }
    Ok(())
}
