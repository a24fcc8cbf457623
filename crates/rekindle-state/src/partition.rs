use std::collections::{BTreeSet, HashMap, HashSet};

use rekindle_rules::UserProfile;
use rocksdb::WriteBatch;

use crate::changelog::{meta_record, profile_record, tombstone, ChangelogMeta, ChangelogRecord};
use crate::keys::{partition_prefix, profile_key, timer_key};
use crate::store::{CF_META, CF_PROFILES, CF_TIMERS};
use crate::{PartitionMeta, StateError, Store};

/// A timer whose time has come: wake `user_id`, whose profile said `due_ms`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DueTimer {
    pub due_ms: i64,
    pub user_id: String,
}

/// One partition's state with the current batch's changes buffered on top.
///
/// Reads see the batch's own writes. Nothing reaches RocksDB until [`PartitionState::flush`],
/// which writes profiles, timer changes, the next offset and the clock in one atomic batch.
pub struct PartitionState {
    store: Store,
    partition: u32,
    meta: PartitionMeta,
    has_meta: bool,
    profiles: HashMap<String, UserProfile>,
    /// Users deleted this batch: their profiles are removed at flush.
    deleted: HashSet<String>,
    timers_added: BTreeSet<(i64, String)>,
    timers_deleted: HashSet<(i64, String)>,
    /// Every stored timer up to this time has been handed out (and so deleted) this batch,
    /// so later scans in the same batch start after it.
    scanned_through: Option<i64>,
    /// No timer is due before this; may be early (a stale entry), never late.
    next_due: Option<i64>,
    /// The position or counts changed since the last flush.
    meta_dirty: bool,
    /// Profiles encoded for the changelog, reused by the flush that follows unless a
    /// profile was touched in between.
    encoded: Option<Vec<(String, Vec<u8>)>>,
}

impl PartitionState {
    pub fn open(store: &Store, partition: u32) -> Result<PartitionState, StateError> {
        let stored = store.meta(partition)?;
        Ok(PartitionState {
            store: store.clone(),
            partition,
            meta: stored.unwrap_or_default(),
            has_meta: stored.is_some(),
            profiles: HashMap::new(),
            deleted: HashSet::new(),
            timers_added: BTreeSet::new(),
            timers_deleted: HashSet::new(),
            scanned_through: None,
            next_due: store.next_timer(partition, i64::MIN)?,
            meta_dirty: false,
            encoded: None,
        })
    }

    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// The stored position, or `None` for a partition this store has never processed.
    pub fn resume_offset(&self) -> Option<i64> {
        self.has_meta.then_some(self.meta.next_offset)
    }

    pub fn meta(&self) -> PartitionMeta {
        self.meta
    }

    pub fn set_next_offset(&mut self, next_offset: i64) {
        self.meta_dirty |= !self.has_meta || self.meta.next_offset != next_offset;
        self.meta.next_offset = next_offset;
        self.has_meta = true;
    }

    pub fn clock_ms(&self) -> i64 {
        self.meta.clock_ms
    }

    pub fn set_clock_ms(&mut self, clock_ms: i64) {
        self.meta_dirty |= self.meta.clock_ms != clock_ms;
        self.meta.clock_ms = clock_ms;
    }

    /// Applies a lifecycle stage change to the partition's per-stage user counts.
    pub fn count_stage_change(&mut self, from: Option<usize>, to: Option<usize>) {
        self.meta_dirty = true;
        if let Some(slot) = from.and_then(|i| self.meta.stage_users.get_mut(i)) {
            *slot = slot.saturating_sub(1);
        }
        if let Some(slot) = to.and_then(|i| self.meta.stage_users.get_mut(i)) {
            *slot = slot.saturating_add(1);
        }
    }

    /// Forgets a user: the profile is removed at flush. The caller removes the user's timer
    /// (it knows the time from the profile).
    pub fn delete_profile(&mut self, user_id: &str) {
        self.encoded = None;
        self.profiles.remove(user_id);
        self.deleted.insert(user_id.to_string());
    }

    /// The user's profile, loaded once per batch and written back at flush.
    pub fn profile_mut(&mut self, user_id: &str) -> Result<&mut UserProfile, StateError> {
        self.encoded = None;
        if !self.profiles.contains_key(user_id) {
            // A user deleted earlier in this batch starts afresh, whatever is stored.
            let stored = if self.deleted.remove(user_id) {
                UserProfile::default()
            } else {
                self.store
                    .profile(self.partition, user_id)?
                    .unwrap_or_default()
            };
            self.profiles.insert(user_id.to_string(), stored);
        }
        self.profiles.get_mut(user_id).ok_or(StateError::Corrupt {
            what: "profile cache",
            partition: self.partition,
            reason: "entry vanished".into(),
        })
    }

    /// Moves the user's single timer. Callers keep `UserProfile::wake_at_ms` in step.
    pub fn move_timer(&mut self, user_id: &str, from: Option<i64>, to: Option<i64>) {
        if from == to {
            return;
        }
        self.meta_dirty = true;
        if from.is_some() {
            self.meta.pending_timers = self.meta.pending_timers.saturating_sub(1);
        }
        if to.is_some() {
            self.meta.pending_timers = self.meta.pending_timers.saturating_add(1);
        }
        if let Some(old) = from {
            let key = (old, user_id.to_string());
            self.timers_added.remove(&key);
            self.timers_deleted.insert(key);
        }
        if let Some(new) = to {
            let key = (new, user_id.to_string());
            self.timers_deleted.remove(&key);
            self.timers_added.insert(key);
            self.next_due = Some(self.next_due.map_or(new, |d| d.min(new)));
        }
    }

    /// True when some timer may be due at `now_ms`: the cheap test done on every record.
    pub fn may_have_due(&self, now_ms: i64) -> bool {
        self.next_due.is_some_and(|d| d <= now_ms)
    }

    /// Removes and returns every timer due at or before `now_ms`, in due order. The caller
    /// re-arms whatever should wake again.
    pub fn take_due(&mut self, now_ms: i64) -> Result<Vec<DueTimer>, StateError> {
        let from = self
            .scanned_through
            .map_or(i64::MIN, |s| s.saturating_add(1));
        let mut due: BTreeSet<(i64, String)> = BTreeSet::new();
        if from <= now_ms {
            for key in self.store.timers_between(self.partition, from, now_ms)? {
                if !self.timers_deleted.contains(&key) {
                    due.insert(key);
                }
            }
        }
        let overlay: Vec<(i64, String)> = self
            .timers_added
            .iter()
            .take_while(|(d, _)| *d <= now_ms)
            .cloned()
            .collect();
        due.extend(overlay);
        for key in &due {
            self.timers_added.remove(key);
            self.timers_deleted.insert(key.clone());
        }
        let taken = i64::try_from(due.len()).unwrap_or(i64::MAX);
        self.meta_dirty |= taken > 0;
        self.meta.pending_timers = self.meta.pending_timers.saturating_sub(taken);
        self.scanned_through = Some(self.scanned_through.map_or(now_ms, |s| s.max(now_ms)));
        let stored_next = self
            .store
            .next_timer(self.partition, now_ms.saturating_add(1))?;
        let overlay_next = self.timers_added.first().map(|(d, _)| *d);
        self.next_due = match (stored_next, overlay_next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(due
            .into_iter()
            .map(|(due_ms, user_id)| DueTimer { due_ms, user_id })
            .collect())
    }

    /// Number of profiles touched in the current batch.
    pub fn dirty_profiles(&self) -> usize {
        self.profiles.len()
    }

    /// True when the batch changed anything a flush would write.
    pub fn is_dirty(&self) -> bool {
        self.meta_dirty || !self.profiles.is_empty() || !self.deleted.is_empty()
    }

    fn encode_profiles(&mut self) -> Result<&[(String, Vec<u8>)], StateError> {
        if self.encoded.is_none() {
            let mut encoded = Vec::with_capacity(self.profiles.len());
            for (user, profile) in &self.profiles {
                let value = postcard::to_allocvec(profile).map_err(|e| StateError::Encode {
                    what: "profile",
                    reason: e.to_string(),
                })?;
                encoded.push((user.clone(), value));
            }
            self.encoded = Some(encoded);
        }
        Ok(self.encoded.as_deref().unwrap_or_default())
    }

    /// The batch's changes as changelog records: touched profiles, deleted users, then the
    /// position (last, so that a reader knows the batch is complete). Empty when the batch
    /// changed nothing.
    pub fn changelog_records(&mut self) -> Result<Vec<ChangelogRecord>, StateError> {
        let mut records = Vec::new();
        if !self.is_dirty() {
            return Ok(records);
        }
        for (user, value) in self.encode_profiles()? {
            records.push(profile_record(user, value));
        }
        for user in &self.deleted {
            records.push(tombstone(user));
        }
        if self.has_meta {
            records.push(meta_record(ChangelogMeta {
                next_offset: self.meta.next_offset,
                clock_ms: self.meta.clock_ms,
            })?);
        }
        Ok(records)
    }

    /// Writes the batch's profiles, timers, next offset and clock atomically.
    /// `changelog_next`: the changelog offset after this batch's records, when they were sent.
    pub fn flush(&mut self, changelog_next: Option<i64>) -> Result<(), StateError> {
        if changelog_next.is_some() {
            self.meta.changelog_next = changelog_next;
        }
        self.encode_profiles()?;
        let profiles_cf = self.store.cf(CF_PROFILES)?;
        let timers_cf = self.store.cf(CF_TIMERS)?;
        let meta_cf = self.store.cf(CF_META)?;
        let mut batch = WriteBatch::default();
        for (user, value) in self.encoded.as_deref().unwrap_or_default() {
            batch.put_cf(profiles_cf, profile_key(self.partition, user), value);
        }
        for user in &self.deleted {
            batch.delete_cf(profiles_cf, profile_key(self.partition, user));
        }
        for (due, user) in &self.timers_deleted {
            batch.delete_cf(timers_cf, timer_key(self.partition, *due, user));
        }
        for (due, user) in &self.timers_added {
            batch.put_cf(timers_cf, timer_key(self.partition, *due, user), []);
        }
        if self.has_meta {
            let meta = postcard::to_allocvec(&self.meta).map_err(|e| StateError::Encode {
                what: "partition meta",
                reason: e.to_string(),
            })?;
            batch.put_cf(meta_cf, partition_prefix(self.partition), meta);
        }
        self.store.db().write(batch)?;
        self.meta_dirty = false;
        self.encoded = None;
        self.profiles.clear();
        self.deleted.clear();
        self.timers_added.clear();
        self.timers_deleted.clear();
        self.scanned_through = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreOptions;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), &StoreOptions::default()).expect("open");
        (dir, store)
    }

    #[test]
    fn flush_persists_profiles_timers_offsets_and_clock_together() {
        let (dir, store) = store();
        let mut p = PartitionState::open(&store, 3).expect("open");
        assert_eq!(p.resume_offset(), None);
        p.profile_mut("alice").expect("profile").last_active_ms = 42;
        p.move_timer("alice", None, Some(100));
        p.set_next_offset(17);
        p.set_clock_ms(50);
        p.flush(None).expect("flush");
        drop(p);
        drop(store);

        let store = Store::open(dir.path(), &StoreOptions::default()).expect("reopen");
        let p = PartitionState::open(&store, 3).expect("open");
        assert_eq!(p.resume_offset(), Some(17));
        assert_eq!(p.clock_ms(), 50);
        assert_eq!(
            store
                .profile(3, "alice")
                .expect("read")
                .map(|u| u.last_active_ms),
            Some(42)
        );
        assert_eq!(
            store.timers_between(3, 0, 1000).expect("timers"),
            vec![(100, "alice".to_string())]
        );
        assert_eq!(
            store.count_timers(2).expect("count"),
            0,
            "partitions do not see each other"
        );
    }

    #[test]
    fn deleted_profiles_are_removed_at_flush_and_restart_empty() {
        let (_dir, store) = store();
        let mut p = PartitionState::open(&store, 0).expect("open");
        p.profile_mut("carol").expect("profile").last_active_ms = 9;
        p.count_stage_change(None, Some(1));
        p.flush(None).expect("flush");
        p.delete_profile("carol");
        p.count_stage_change(Some(1), None);
        p.flush(None).expect("flush");
        assert_eq!(store.profile(0, "carol").expect("read"), None);
        // Deleted, then seen again in the same batch: a fresh profile, not the stored one.
        let mut p = PartitionState::open(&store, 0).expect("open");
        p.profile_mut("dave").expect("profile").last_active_ms = 5;
        p.flush(None).expect("flush");
        p.delete_profile("dave");
        assert_eq!(p.profile_mut("dave").expect("profile").last_active_ms, 0);
        assert_eq!(p.meta().stage_users, [0; 5]);
        assert_eq!(
            store.partitions().expect("partitions"),
            Vec::<u32>::new(),
            "no offsets yet"
        );
    }

    #[test]
    fn unflushed_changes_are_not_durable() {
        let (_dir, store) = store();
        let mut p = PartitionState::open(&store, 0).expect("open");
        p.profile_mut("bob").expect("profile").last_active_ms = 1;
        p.set_next_offset(5);
        drop(p);
        assert_eq!(store.profile(0, "bob").expect("read"), None);
        assert_eq!(store.meta(0).expect("meta"), None);
    }

    #[test]
    fn take_due_merges_stored_and_buffered_timers_once() {
        let (_dir, store) = store();
        let mut p = PartitionState::open(&store, 1).expect("open");
        p.move_timer("a", None, Some(10));
        p.move_timer("b", None, Some(30));
        p.move_timer("c", None, Some(20));
        p.flush(None).expect("flush");
        // In the next batch: c moves later, d is new and early.
        p.move_timer("c", Some(20), Some(40));
        p.move_timer("d", None, Some(5));
        assert!(p.may_have_due(5));
        assert!(!p.may_have_due(4));
        let due: Vec<_> = p
            .take_due(30)
            .expect("due")
            .into_iter()
            .map(|t| (t.due_ms, t.user_id))
            .collect();
        assert_eq!(
            due,
            vec![(5, "d".into()), (10, "a".into()), (30, "b".into())]
        );
        assert!(p.take_due(30).expect("again").is_empty(), "handed out once");
        // Re-arming a handed-out timer at a time already scanned still finds it.
        p.move_timer("a", None, Some(12));
        assert_eq!(p.take_due(35).expect("re-armed").len(), 1);
        assert!(p.may_have_due(40));
        p.flush(None).expect("flush");
        assert_eq!(p.meta().pending_timers, 1, "the count follows the index");
        assert_eq!(
            store.timers_between(1, i64::MIN, i64::MAX).expect("timers"),
            vec![(40, "c".to_string())]
        );
    }
}
