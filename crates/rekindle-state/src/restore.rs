//! Rebuilding a partition's state from its changelog.

use rekindle_rules::MAX_SEGMENTS;
use rocksdb::WriteBatch;

use crate::changelog::{decode_entry, ChangelogEntry, ChangelogMeta};
use crate::error::encode;
use crate::keys::{growth_key, partition_prefix, profile_key, timer_key};
use crate::store::{CF_META, CF_PROFILES, CF_TIMERS};
use crate::{PartitionMeta, StateError, Store};

/// Writes are grouped into RocksDB batches of this many records.
const WRITE_BATCH_RECORDS: usize = 10_000;

/// What a restore did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreSummary {
    /// Changelog records applied.
    pub records: u64,
    /// Profiles the partition holds afterwards (0 when nothing was applied).
    pub users: u64,
    /// The partition's position afterwards; `None`: it has never completed a batch.
    pub meta: Option<PartitionMeta>,
}

/// A restore in progress: feed it the changelog partition's records in log order, then
/// [`Restore::finish`]. Nothing is usable until then; a restore that fails half way is
/// started again from scratch (`fresh`), since the changelog is the truth.
pub struct Restore<'a> {
    store: &'a Store,
    partition: u32,
    fresh: bool,
    batch: WriteBatch,
    in_batch: usize,
    records: u64,
    /// The latest meta record seen.
    meta: Option<ChangelogMeta>,
}

impl Store {
    /// Starts rebuilding `partition` from its changelog. `fresh` drops whatever this store
    /// holds for the partition first (read the changelog from its beginning); otherwise the
    /// records are applied on top of the stored state (read from its `changelog_next`).
    pub fn restore(&self, partition: u32, fresh: bool) -> Result<Restore<'_>, StateError> {
        if fresh {
            self.delete_partition(partition)?;
        }
        Ok(Restore {
            store: self,
            partition,
            fresh,
            batch: WriteBatch::default(),
            in_batch: 0,
            records: 0,
            meta: None,
        })
    }

    /// Removes every profile, timer and the position of `partition`.
    pub fn delete_partition(&self, partition: u32) -> Result<(), StateError> {
        let from = partition_prefix(partition);
        let to = partition_prefix(partition.saturating_add(1));
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf(CF_PROFILES)?, from, to);
        batch.delete_range_cf(self.cf(CF_TIMERS)?, from, to);
        batch.delete_cf(self.cf(CF_META)?, from);
        batch.delete_cf(self.cf(CF_META)?, growth_key(partition));
        self.write(batch)?;
        Ok(())
    }
}

impl Restore<'_> {
    /// Applies one changelog record (`value` `None`: a tombstone).
    pub fn apply(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), StateError> {
        match decode_entry(self.partition, key, value)? {
            ChangelogEntry::Meta(meta) => self.meta = Some(meta),
            // Stored as the changelog carries it, without the version byte.
            ChangelogEntry::Growth(_) => self.batch.put_cf(
                self.store.cf(CF_META)?,
                growth_key(self.partition),
                value.and_then(|v| v.get(1..)).unwrap_or_default(),
            ),
            ChangelogEntry::Profile { user_id, profile } => {
                let key = profile_key(self.partition, &user_id);
                let profiles = self.store.cf(CF_PROFILES)?;
                match (profile, value) {
                    // The stored value is the changelog value without its version byte.
                    (Some(_), Some(bytes)) => {
                        self.batch
                            .put_cf(profiles, key, bytes.get(1..).unwrap_or_default())
                    }
                    _ => self.batch.delete_cf(profiles, key),
                }
            }
        }
        self.records += 1;
        self.in_batch += 1;
        if self.in_batch >= WRITE_BATCH_RECORDS {
            self.write()?;
        }
        Ok(())
    }

    fn write(&mut self) -> Result<(), StateError> {
        let batch = std::mem::take(&mut self.batch);
        self.store.write(batch)?;
        self.in_batch = 0;
        Ok(())
    }

    /// Completes the restore: rebuilds the partition's timer index and stage counts from its
    /// profiles (only when something was applied) and stores the position, with
    /// `changelog_next` the changelog offset the reading stopped at.
    pub fn finish(mut self, changelog_next: i64) -> Result<RestoreSummary, StateError> {
        self.write()?;
        let local = self.store.meta(self.partition)?;
        if self.records == 0 && !self.fresh {
            // Nothing new (transaction markers at most): remember how far the log was read.
            let meta = local.map(|m| PartitionMeta {
                changelog_next: Some(changelog_next),
                ..m
            });
            if let Some(meta) = meta {
                self.put_meta(&meta)?;
            }
            return Ok(RestoreSummary {
                records: 0,
                users: 0,
                meta,
            });
        }
        let (users, stage_users, segment_users, pending_timers) = self.rebuild_timers()?;
        // A changelog without a meta record (a first batch that crashed before its meta
        // record went out) leaves the position where it was: the profiles' own applied
        // offsets keep their events from being counted twice.
        let position = match (self.meta, local) {
            (Some(m), _) => Some((m.next_offset, m.clock_ms)),
            (None, Some(l)) => Some((l.next_offset, l.clock_ms)),
            (None, None) => None,
        };
        let meta = position.map(|(next_offset, clock_ms)| PartitionMeta {
            next_offset,
            clock_ms,
            stage_users,
            pending_timers,
            changelog_next: Some(changelog_next),
            segment_users,
            // Unknown: the worker recomputes every segment under its configuration.
            plan_hash: 0,
        });
        if let Some(meta) = &meta {
            self.put_meta(meta)?;
        }
        Ok(RestoreSummary {
            records: self.records,
            users,
            meta,
        })
    }

    fn put_meta(&self, meta: &PartitionMeta) -> Result<(), StateError> {
        let value = encode("partition meta", meta)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.store.cf(CF_META)?,
            partition_prefix(self.partition),
            value,
        );
        self.store.write(batch)
    }

    /// Replaces the partition's timer index with one entry per profile that has a wake-up,
    /// and counts users per stage and per segment. The entries are full evaluations and the
    /// counts are those of the stored profiles: the plans are unknown (`plan_hash` 0), so
    /// the engine plans every user anew when it opens the partition. Returns (profiles, stage counts, segment
    /// counts, timers).
    #[allow(clippy::type_complexity)]
    fn rebuild_timers(&mut self) -> Result<(u64, [i64; 5], [i64; MAX_SEGMENTS], i64), StateError> {
        let store = self.store;
        let timers = store.cf(CF_TIMERS)?;
        store.clear_timers(self.partition)?;

        let mut users = 0u64;
        let mut stage_users = [0i64; 5];
        let mut segment_users = [0i64; MAX_SEGMENTS];
        let mut pending = 0i64;
        for entry in store.profile_entries(self.partition)? {
            let (user, profile) = entry?;
            users += 1;
            if let Some(slot) = profile
                .stage
                .and_then(|s| stage_users.get_mut(s.stage.index()))
            {
                *slot += 1;
            }
            if let Some(slot) = profile
                .segment
                .and_then(|s| segment_users.get_mut(usize::from(s)))
            {
                *slot += 1;
            }
            if let Some(due) = profile.wake_at_ms {
                pending += 1;
                self.batch
                    .put_cf(timers, timer_key(self.partition, due, &user), []);
                self.in_batch += 1;
                if self.in_batch >= WRITE_BATCH_RECORDS {
                    self.write()?;
                }
            }
        }
        self.write()?;
        Ok((users, stage_users, segment_users, pending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChangelogRecord, PartitionState, StoreOptions};
    use rekindle_rules::{LifecycleStage, StageMemory};

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), &StoreOptions::default()).expect("open");
        (dir, store)
    }

    /// One batch on `p`: touch `users` (wake at `wake`), delete `gone`, move to `next`.
    fn batch(
        p: &mut PartitionState,
        users: &[&str],
        wake: i64,
        gone: &[&str],
        next: i64,
    ) -> Vec<ChangelogRecord> {
        let growth = rekindle_rules::Growth::new(&rekindle_rules::GrowthConfig::default())
            .expect("valid")
            .expect("enabled");
        for user in users {
            let (profile, figures) = p.profile_and_growth_mut(user).expect("profile");
            let day_ms = next * rekindle_rules::DAY_MS;
            growth.record(&mut profile.active_days, day_ms, day_ms, figures);
            let before = profile.wake_at_ms;
            let first = profile.stage.is_none();
            profile.last_active_ms = next;
            profile.wake_at_ms = Some(wake);
            profile.stage = Some(StageMemory {
                stage: LifecycleStage::Active,
                since_ms: next,
            });
            p.move_timer(user, before, Some((wake, Vec::new())));
            if first {
                p.count_stage_change(None, Some(LifecycleStage::Active.index()));
            }
        }
        for user in gone {
            let before = p.profile_mut(user).expect("profile").wake_at_ms;
            p.move_timer(user, before, None);
            p.count_stage_change(Some(LifecycleStage::Active.index()), None);
            p.delete_profile(user);
        }
        p.set_next_offset(next);
        p.set_clock_ms(next * 10);
        let records = p.changelog_records().expect("records");
        p.flush(None).expect("flush");
        records
    }

    fn replay_into(
        store: &Store,
        fresh: bool,
        log: &[ChangelogRecord],
        end: i64,
    ) -> RestoreSummary {
        let mut restore = store.restore(7, fresh).expect("restore");
        for r in log {
            restore.apply(&r.key, r.value.as_deref()).expect("apply");
        }
        restore.finish(end).expect("finish")
    }

    type Snapshot = (Vec<(i64, String)>, Option<(i64, i64, [i64; 5], i64)>);

    fn snapshot(store: &Store) -> Snapshot {
        let timers = store.timers_between(7, i64::MIN, i64::MAX).expect("timers");
        let meta = store
            .meta(7)
            .expect("meta")
            .map(|m| (m.next_offset, m.clock_ms, m.stage_users, m.pending_timers));
        (timers, meta)
    }

    #[test]
    fn a_fresh_store_rebuilt_from_the_changelog_equals_the_original() {
        let (_a, original) = store();
        let mut p = PartitionState::open(&original, 7).expect("open");
        let mut log = batch(&mut p, &["ann", "bob", "cy"], 100, &[], 3);
        log.extend(batch(&mut p, &["bob"], 200, &["cy"], 5));
        log.extend(batch(&mut p, &[], 0, &[], 6));

        let (_b, restored) = store();
        // Stale state of the partition is dropped by a fresh restore.
        let mut stale = PartitionState::open(&restored, 7).expect("open");
        batch(&mut stale, &["zed"], 50, &[], 99);
        let summary = replay_into(&restored, true, &log, log.len() as i64);
        assert_eq!(summary.users, 2);
        assert_eq!(summary.records, log.len() as u64);
        assert_eq!(snapshot(&restored), snapshot(&original));
        let figures = restored.growth(7).expect("growth");
        assert_eq!(figures, original.growth(7).expect("growth"));
        assert_eq!(figures.day(5).dau, 1, "bob on day 5");
        assert_eq!(figures.day(5).wau, 3, "ann, bob and cy within the week");
        assert!(restored.growth(8).expect("growth").days().next().is_none());
        for user in ["ann", "bob", "cy", "zed"] {
            assert_eq!(
                restored.profile(7, user).expect("read"),
                original.profile(7, user).expect("read"),
                "{user}"
            );
        }
        assert_eq!(
            restored
                .meta(7)
                .expect("meta")
                .and_then(|m| m.changelog_next),
            Some(log.len() as i64)
        );
    }

    #[test]
    fn a_tail_is_applied_on_top_and_an_empty_tail_changes_only_the_position() {
        let (_a, original) = store();
        let mut p = PartitionState::open(&original, 7).expect("open");
        let head = batch(&mut p, &["ann", "bob"], 100, &[], 3);
        let tail = batch(&mut p, &["cy"], 300, &["ann"], 8);

        let (_b, local) = store();
        replay_into(&local, true, &head, 2);
        let summary = replay_into(&local, false, &tail, 9);
        assert_eq!(summary.records, tail.len() as u64);
        assert_eq!(snapshot(&local), snapshot(&original));

        let nothing = replay_into(&local, false, &[], 11);
        assert_eq!(nothing.records, 0);
        assert_eq!(snapshot(&local), snapshot(&original));
        assert_eq!(
            local.meta(7).expect("meta").and_then(|m| m.changelog_next),
            Some(11)
        );
    }

    #[test]
    fn profiles_of_a_batch_without_its_meta_record_keep_the_old_position() {
        let (_a, original) = store();
        let mut p = PartitionState::open(&original, 7).expect("open");
        let mut log = batch(&mut p, &["ann"], 100, &[], 3);
        let crashed = batch(&mut p, &["bob"], 200, &[], 5);
        // The crashed batch's profile records went out, its meta record did not.
        log.extend(crashed.into_iter().filter(|r| r.key != b"m"));
        let (_b, restored) = store();
        let summary = replay_into(&restored, true, &log, 4);
        let meta = summary.meta.expect("meta");
        assert_eq!((meta.next_offset, meta.clock_ms), (3, 30));
        assert_eq!(meta.pending_timers, 2, "both profiles' timers are rebuilt");
        assert!(restored.profile(7, "bob").expect("read").is_some());
    }
}
