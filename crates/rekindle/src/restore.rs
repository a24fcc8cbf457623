//! Preparing a newly assigned partition's state: the local store when it is current, the
//! changelog for whatever it lacks.

use std::time::Instant;

use anyhow::Context;
use rekindle_kafka::ChangelogReader;
use rekindle_state::Store;
use rekindle_telemetry::Metrics;
use tracing::info;

/// Brings `partition`'s state up to date with its changelog and returns the offset to
/// resume the activity topic from (`None`: the partition has no state anywhere).
///
/// * Local state that knows its changelog position reads only the changelog's tail (nothing,
///   when this worker wrote the last change: a restart on its own disk).
/// * No local state, or local state written without a changelog: rebuilt from the whole
///   changelog, unless the changelog is empty (then local state, if any, stands).
pub fn prepare_partition(
    store: &Store,
    reader: Option<&ChangelogReader>,
    partition: u32,
    metrics: &Metrics,
) -> anyhow::Result<Option<i64>> {
    let local = store.meta(partition)?;
    let Some(reader) = reader else {
        return Ok(local.map(|m| m.next_offset));
    };
    let known = local.and_then(|m| m.changelog_next);
    if local.is_some() && known.is_none() && reader.end_offset(partition)? == 0 {
        return Ok(local.map(|m| m.next_offset));
    }
    let started = Instant::now();
    let fresh = known.is_none();
    let mut restore = store.restore(partition, fresh)?;
    let read = reader
        .read(partition, known, |key, value| restore.apply(key, value))?
        .with_context(|| format!("applying changelog records of partition {partition}"))?;
    let summary = restore.finish(read.next_offset)?;
    metrics.state_restored_records.inc_by(summary.records);
    if summary.records > 0 || fresh {
        info!(
            partition,
            fresh,
            records = summary.records,
            users = summary.users,
            resume_at = ?summary.meta.map(|m| m.next_offset),
            seconds = started.elapsed().as_secs_f64(),
            "partition state restored from the changelog"
        );
    }
    Ok(summary.meta.map(|m| m.next_offset))
}
