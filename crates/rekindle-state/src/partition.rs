use std::collections::BTreeMap;

use foldhash::fast::RandomState;
use hashbrown::HashMap;

use rekindle_rules::{GrowthFigures, UserProfile, MAX_SEGMENTS};
use rocksdb::WriteBatch;

use crate::changelog::{
    growth_record, meta_record, profile_record, tombstone, ChangelogMeta, ChangelogRecord,
};
use crate::error::encode;
use crate::keys::{growth_key, partition_prefix, timer_seek, write_profile_key, write_timer_key};
use crate::profile_cache::{EncodedBatch, ProfileCache};
use crate::store::{OpenPartition, CF_META, CF_PROFILES, CF_TIMERS};
use crate::{PartitionMeta, StateError, Store};

/// Timer index entries read from RocksDB at a time when the in-memory window runs out.
const TIMER_CHUNK: usize = 4_096;
/// The in-memory timer window is cut back to half of this when it grows past it. Small, so
/// that a partition's timers moving far ahead of its clock do not churn a large B-tree:
/// each move there is a removal and an insertion, where beyond the window it is neither.
const TIMER_WINDOW_MAX: usize = 8_192;

/// A timer whose time has come: wake `user_id`, whose profile said `due_ms`, or count what
/// `value` says (see `rekindle_rules::Wake`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DueTimer {
    pub due_ms: i64,
    pub user_id: String,
    pub value: Vec<u8>,
}

/// A timer index entry's key: (due time, user).
type TimerKey = (i64, String);

/// A user's timer entry in the current batch.
struct TimerMove {
    /// The entry's time in the store, as the last flush left it; `None`: the store has none.
    stored: Option<i64>,
    /// The entry now, with its value; `None`: the user has none.
    current: Option<(i64, Vec<u8>)>,
}

/// The earliest part of the partition's timer index, held in memory so that checking for
/// due timers (after every record that moves the clock) reads no RocksDB iterator.
struct TimerWindow {
    /// Every index entry (stored, plus this batch's additions, minus its removals) due at or
    /// before `through`.
    entries: BTreeMap<TimerKey, Vec<u8>>,
    /// `None` until first loaded; `Some(i64::MAX)` once the whole index is in memory.
    through: Option<i64>,
    /// Entries read from RocksDB at a time.
    chunk: usize,
    /// Entries beyond which the window is cut back to half.
    max: usize,
}

impl TimerWindow {
    fn new(chunk: usize, max: usize) -> TimerWindow {
        TimerWindow {
            entries: BTreeMap::new(),
            through: None,
            chunk: chunk.max(1),
            max: max.max(2),
        }
    }

    fn covers(&self, due_ms: i64) -> bool {
        self.through.is_some_and(|t| due_ms <= t)
    }

    fn complete(&self) -> bool {
        self.through == Some(i64::MAX)
    }

    /// Keeps memory bounded: drops the latest entries, which stay in RocksDB or in the
    /// batch's additions, and lowers `through` below them.
    fn trim(&mut self) {
        if self.entries.len() <= self.max {
            return;
        }
        let Some(cut) = self.entries.keys().nth(self.max / 2).map(|(d, _)| *d) else {
            return;
        };
        self.entries.split_off(&(cut, String::new()));
        self.through = Some(cut.saturating_sub(1));
    }
}

/// One user moved from slot `from` to slot `to` of a count (`None`: counted in neither).
fn move_count(slots: &mut [i64], from: Option<usize>, to: Option<usize>) {
    if let Some(slot) = from.and_then(|i| slots.get_mut(i)) {
        *slot = slot.saturating_sub(1);
    }
    if let Some(slot) = to.and_then(|i| slots.get_mut(i)) {
        *slot = slot.saturating_add(1);
    }
}

/// One partition's state with the current batch's changes buffered on top.
///
/// Reads see the batch's own writes. Nothing reaches RocksDB until [`PartitionState::flush`],
/// which writes profiles, timer changes, the next offset and the clock in one atomic batch.
/// Profiles and the earliest timers stay in memory between batches (bounded, see
/// [`crate::StoreOptions::profile_cache_users`]); they are only ever copies of what RocksDB
/// holds plus the unflushed batch, so dropping a `PartitionState` loses nothing flushed.
pub struct PartitionState {
    store: Store,
    partition: u32,
    meta: PartitionMeta,
    has_meta: bool,
    profiles: ProfileCache,
    /// This batch's changes to the stored timer index, per user: where the store has the
    /// user's single entry and where the batch left it. Keyed by user, so that an event
    /// moving an entry again costs one lookup by the id it already has; a user active many
    /// times in a batch costs one deletion and one put at the flush, not one per event.
    /// Unordered: only the flush and the window's loads need entries in due order, and sort
    /// or scan for it (see `load_timers`).
    timer_moves: HashMap<String, TimerMove, RandomState>,
    timers: TimerWindow,
    /// The stored index holds nothing at or before this time: the last flush removed it
    /// with a range deletion (see [`PartitionState::dead_through`]). `None` until then.
    removed_through: Option<i64>,
    /// Flushes so far: the clock of the profile cache's eviction.
    batch: u64,
    /// The position or counts changed since the last flush.
    meta_dirty: bool,
    /// The partition's growth figures, written with the batch that changed them.
    growth: GrowthFigures,
    growth_dirty: bool,
    /// Profiles encoded for the changelog, reused by the flush that follows unless a
    /// profile was touched in between.
    encoded: Option<EncodedBatch>,
    _open: OpenPartition,
}

impl PartitionState {
    pub fn open(store: &Store, partition: u32) -> Result<PartitionState, StateError> {
        Self::open_with_window(
            store,
            partition,
            TimerWindow::new(TIMER_CHUNK, TIMER_WINDOW_MAX),
        )
    }

    fn open_with_window(
        store: &Store,
        partition: u32,
        timers: TimerWindow,
    ) -> Result<PartitionState, StateError> {
        let stored = store.meta(partition)?;
        let growth = store.growth(partition)?;
        let mut state = PartitionState {
            store: store.clone(),
            partition,
            meta: stored.unwrap_or_default(),
            has_meta: stored.is_some(),
            profiles: ProfileCache::default(),
            timer_moves: HashMap::default(),
            timers,
            removed_through: None,
            batch: 0,
            meta_dirty: false,
            growth,
            growth_dirty: false,
            encoded: None,
            _open: store.partition_opened(),
        };
        state.load_timers()?;
        Ok(state)
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
        move_count(&mut self.meta.stage_users, from, to);
    }

    pub fn growth(&self) -> &GrowthFigures {
        &self.growth
    }

    /// The growth figures, to change: they are written with this batch.
    pub fn growth_mut(&mut self) -> &mut GrowthFigures {
        self.growth_dirty = true;
        &mut self.growth
    }

    /// The user's profile (as [`PartitionState::profile_mut`]) and the partition's growth
    /// figures (as [`PartitionState::growth_mut`]) together, to count the user's activity.
    pub fn profile_and_growth_mut(
        &mut self,
        user_id: &str,
    ) -> Result<(&mut UserProfile, &mut GrowthFigures), StateError> {
        self.growth_dirty = true;
        self.encoded = None;
        let share = self.store.profile_cache_share();
        let profile =
            self.profiles
                .get_mut(&self.store, self.partition, self.batch, share, user_id)?;
        Ok((profile, &mut self.growth))
    }

    /// Applies an RFM segment change to the partition's per-segment user counts.
    pub fn count_segment_change(&mut self, from: Option<usize>, to: Option<usize>) {
        self.meta_dirty = true;
        move_count(&mut self.meta.segment_users, from, to);
    }

    /// Replaces the per-stage and per-segment counts and the configuration they were
    /// counted under (after every profile was planned anew).
    pub fn set_plan_counts(&mut self, stages: [i64; 5], segments: [i64; MAX_SEGMENTS], hash: u64) {
        self.meta_dirty = true;
        self.meta.stage_users = stages;
        self.meta.segment_users = segments;
        self.meta.plan_hash = hash;
    }

    /// Up to `limit` users of this partition with a stored profile, after `after` (flush
    /// first: users created in the batch are not stored yet).
    pub fn stored_users(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StateError> {
        self.store.user_ids(self.partition, after, limit)
    }

    /// Forgets a user: the profile is removed at flush. The caller removes the user's timer
    /// (it knows the time from the profile).
    pub fn delete_profile(&mut self, user_id: &str) {
        self.encoded = None;
        self.profiles.delete(user_id);
    }

    /// The user's profile, read from RocksDB unless cached, written back at flush.
    pub fn profile_mut(&mut self, user_id: &str) -> Result<&mut UserProfile, StateError> {
        self.encoded = None;
        let share = self.store.profile_cache_share();
        self.profiles
            .get_mut(&self.store, self.partition, self.batch, share, user_id)
    }

    /// Moves the user's single timer entry from the time `from` to `to`, with its value.
    /// Callers keep the profile in step (see `rekindle_rules::RuleBook::catch_up`).
    pub fn move_timer(&mut self, user_id: &str, from: Option<i64>, to: Option<(i64, Vec<u8>)>) {
        if from.is_none() && to.is_none() {
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
            if self.timers.covers(old) {
                self.timers.entries.remove(&(old, user_id.to_string()));
            }
        }
        if let Some((new, value)) = &to {
            if self.timers.covers(*new) {
                self.timers
                    .entries
                    .insert((*new, user_id.to_string()), value.clone());
                self.timers.trim();
            }
        }
        self.record_move(user_id, from, to);
    }

    /// Notes the user's entry moving from `from` (where the caller had it) to `to`. The
    /// first move in a batch says where the store has it; a later one starts where the
    /// batch left it.
    fn record_move(&mut self, user_id: &str, from: Option<i64>, to: Option<(i64, Vec<u8>)>) {
        match self.timer_moves.get_mut(user_id) {
            Some(moved) => moved.current = to,
            None => {
                self.timer_moves.insert(
                    user_id.to_string(),
                    TimerMove {
                        stored: from,
                        current: to,
                    },
                );
            }
        }
    }

    /// Empties the partition's timer index (in RocksDB at once) before every user's entry
    /// is planned anew, when the entries were planned under another configuration and
    /// cannot be found from the profiles.
    pub fn clear_timers(&mut self) -> Result<(), StateError> {
        self.store.clear_timers(self.partition)?;
        self.timer_moves.clear();
        self.timers = TimerWindow::new(self.timers.chunk, self.timers.max);
        self.meta.pending_timers = 0;
        self.meta_dirty = true;
        self.load_timers()
    }

    /// The latest time at or before which the index has no live entry: every stored entry
    /// up to it has fired or moved, so a flush removes them with one range deletion instead
    /// of a deletion each. Most deletions at scale are of entries that fired (counted
    /// steps re-arm at their next step). `None` before the window is first loaded.
    fn dead_through(&self) -> Option<i64> {
        let through = self.timers.through?;
        // The window holds every live entry up to `through`, the batch's included.
        let before_live = match self.timers.entries.first_key_value() {
            Some(((due, _), _)) => due.saturating_sub(1),
            None => through,
        };
        Some(before_live.min(self.meta.clock_ms))
    }

    /// True when some timer may be due at `now_ms`: the cheap test done on every record.
    pub fn may_have_due(&self, now_ms: i64) -> bool {
        self.timers
            .entries
            .first_key_value()
            .is_some_and(|((d, _), _)| *d <= now_ms)
            || !self.timers.covers(now_ms)
    }

    /// Reads the next stretch of the stored index into the window, merged with this
    /// batch's changes.
    fn load_timers(&mut self) -> Result<(), StateError> {
        if self.timers.complete() {
            return Ok(());
        }
        let from = self
            .timers
            .through
            .map_or(i64::MIN, |t| t.saturating_add(1));
        let (stored, exhausted) =
            self.store
                .timers_from(self.partition, from, self.timers.chunk)?;
        let mut through = match stored.last() {
            Some(((last, _), _)) if !exhausted => *last,
            _ => i64::MAX,
        };
        // The batch's additions are bounded by a chunk too: a store read to its end would
        // otherwise bring in every addition after it, which a trim then cuts back, and the
        // next load brings in again, once per record while the clock is past the cut.
        // The additions are unordered: one pass finds those the window would take (none
        // after `through` can lower it), and the chunk's bound among them.
        let mut added: Vec<(i64, &str, &Vec<u8>)> = self
            .timer_moves
            .iter()
            .filter_map(|(user, moved)| {
                let (at, value) = moved.current.as_ref()?;
                (from..=through)
                    .contains(at)
                    .then_some((*at, user.as_str(), value))
            })
            .collect();
        if added.len() > self.timers.chunk {
            let (_, (at, _, _), _) =
                added.select_nth_unstable_by_key(self.timers.chunk, |(at, _, _)| *at);
            // Entries due at the same time go in together; `from` at least, so each load
            // moves on.
            through = through.min(at.saturating_sub(1).max(from));
        }
        // A user the batch moved has its entry among the additions, or none.
        for (key, value) in stored {
            if key.0 <= through && !self.timer_moves.contains_key(key.1.as_str()) {
                self.timers.entries.insert(key, value);
            }
        }
        for (at, user, value) in added {
            if at <= through {
                self.timers
                    .entries
                    .insert((at, user.to_string()), value.clone());
            }
        }
        self.timers.through = Some(through);
        Ok(())
    }

    /// Removes and returns the earliest timer due at or before `now_ms`, if any. Timers
    /// armed while handing them out are found by the next call in their place in due order.
    pub fn pop_due(&mut self, now_ms: i64) -> Result<Option<DueTimer>, StateError> {
        loop {
            if self
                .timers
                .entries
                .first_key_value()
                .is_some_and(|((due, _), _)| *due <= now_ms)
            {
                let Some((key, value)) = self.timers.entries.pop_first() else {
                    return Ok(None);
                };
                self.record_move(&key.1, Some(key.0), None);
                self.meta_dirty = true;
                self.meta.pending_timers = self.meta.pending_timers.saturating_sub(1);
                return Ok(Some(DueTimer {
                    due_ms: key.0,
                    user_id: key.1,
                    value,
                }));
            }
            if self.timers.covers(now_ms) {
                return Ok(None);
            }
            self.load_timers()?;
        }
    }

    /// Removes and returns every timer due at or before `now_ms`, in due order.
    pub fn take_due(&mut self, now_ms: i64) -> Result<Vec<DueTimer>, StateError> {
        let mut due = Vec::new();
        while let Some(timer) = self.pop_due(now_ms)? {
            due.push(timer);
        }
        Ok(due)
    }

    /// Number of profiles changed in the current batch.
    pub fn dirty_profiles(&self) -> usize {
        self.profiles.changed()
    }

    /// Profiles held in memory (changed or not).
    pub fn cached_profiles(&self) -> usize {
        self.profiles.len()
    }

    /// Memory held by the stored forms kept behind the decoded profiles, in bytes.
    pub fn stored_profile_bytes(&self) -> usize {
        self.profiles.warm_memory()
    }

    /// True when the batch changed anything a flush would write.
    pub fn is_dirty(&self) -> bool {
        self.meta_dirty || self.growth_dirty || self.profiles.is_dirty()
    }

    /// The batch's changed profiles encoded: those the changelog records were made from if
    /// nothing changed since, else encoded now.
    fn take_encoded(&mut self) -> Result<EncodedBatch, StateError> {
        match self.encoded.take() {
            Some(encoded) => Ok(encoded),
            None => self.profiles.encode_changed(),
        }
    }

    fn encode_profiles(&mut self) -> Result<&EncodedBatch, StateError> {
        let encoded = self.take_encoded()?;
        Ok(self.encoded.insert(encoded))
    }

    /// The batch's changes as changelog records: touched profiles, deleted users, then the
    /// position (last, so that a reader knows the batch is complete). Empty when the batch
    /// changed nothing.
    pub fn changelog_records(&mut self) -> Result<Vec<ChangelogRecord>, StateError> {
        let mut records = Vec::new();
        if !self.is_dirty() {
            return Ok(records);
        }
        for (user, value) in self.encode_profiles()?.iter() {
            records.push(profile_record(user, value.bytes));
        }
        for user in self.profiles.deleted() {
            records.push(tombstone(user));
        }
        if self.growth_dirty {
            records.push(growth_record(&self.growth)?);
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
        let encoded = self.take_encoded()?;
        let profiles_cf = self.store.cf(CF_PROFILES)?;
        let timers_cf = self.store.cf(CF_TIMERS)?;
        let meta_cf = self.store.cf(CF_META)?;
        // Sized up front: RocksDB appends every entry to one buffer, which otherwise grows
        // by copying itself a dozen times in a large commit.
        let timer_entries = self.timer_moves.len() * 2;
        let bytes = encoded.data_bytes() + encoded.len() * 16 + timer_entries * 48 + 1024;
        let mut batch = WriteBatch::with_capacity_bytes(bytes);
        let next_offset = self.resume_offset();
        let mut key = Vec::with_capacity(64);
        for (user, value) in encoded.iter() {
            write_profile_key(&mut key, self.partition, user);
            batch.put_cf(profiles_cf, &key, value.stored(next_offset));
        }
        for user in self.profiles.deleted() {
            write_profile_key(&mut key, self.partition, user);
            batch.delete_cf(profiles_cf, &key);
        }
        // Entries up to the last range deleted are gone, but a batch may arm an entry at a
        // time before it (an event older than the clock), so this flush's range starts after
        // it and covers only the deletions in between.
        let range = self
            .dead_through()
            .filter(|d| self.removed_through < Some(*d))
            .map(|d| {
                (
                    self.removed_through
                        .map_or(i64::MIN, |r| r.saturating_add(1)),
                    d,
                )
            });
        let mut timers_deleted: Vec<(i64, &str)> = Vec::with_capacity(self.timer_moves.len());
        let mut timers_put: Vec<(i64, &str, &Vec<u8>)> = Vec::with_capacity(self.timer_moves.len());
        // Whether the range stands for any deletion: a range deletion is a tombstone every
        // later read of the index steps over until compaction, so a flush with nothing in
        // it (a clock tick with nothing due) writes none.
        let mut range_used = false;
        for (user, moved) in &self.timer_moves {
            let current = moved.current.as_ref().map(|(at, _)| *at);
            if let Some(stored) = moved.stored.filter(|s| current != Some(*s)) {
                if range.is_some_and(|(from, to)| (from..=to).contains(&stored)) {
                    range_used = true;
                } else {
                    timers_deleted.push((stored, user));
                }
            }
            if let Some((at, value)) = &moved.current {
                // Even over a stored entry at the same time: its value may differ.
                timers_put.push((*at, user, value));
            }
        }
        let range = range.filter(|_| range_used);
        if let Some((from, to)) = range {
            batch.delete_range_cf(
                timers_cf,
                timer_seek(self.partition, from),
                timer_seek(self.partition, to.saturating_add(1)),
            );
        }
        // In key order, each kind: RocksDB inserts keys that follow the last one cheaply.
        timers_deleted.sort_unstable();
        for (due, user) in timers_deleted {
            write_timer_key(&mut key, self.partition, due, user);
            batch.delete_cf(timers_cf, &key);
        }
        timers_put.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        for (due, user, value) in timers_put {
            write_timer_key(&mut key, self.partition, due, user);
            batch.put_cf(timers_cf, &key, value);
        }
        if self.has_meta {
            let meta = encode("partition meta", &self.meta)?;
            batch.put_cf(meta_cf, partition_prefix(self.partition), meta);
        }
        if self.growth_dirty {
            let growth = encode("growth figures", &self.growth)?;
            batch.put_cf(meta_cf, growth_key(self.partition), growth);
        }
        self.store.write(batch)?;
        self.meta_dirty = false;
        self.growth_dirty = false;
        self.profiles.settle(
            self.store.profile_cache_share(),
            &encoded,
            self.store.profile_bytes_share(),
        );
        self.timer_moves.clear();
        if let Some((_, to)) = range {
            self.removed_through = Some(to);
        }
        self.batch += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::profile_key;
    use crate::profile_cache::MIN_BATCH_PROFILES;
    use crate::{decode_entry, ChangelogEntry, StoreOptions};

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
        p.move_timer("alice", None, Some((100, Vec::new())));
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

    /// A store read to its end must not bring in every timer the batch armed beyond it:
    /// the window would hold them all until the next trim, and load them again after it.
    #[test]
    fn a_load_brings_in_at_most_a_chunk_of_the_batchs_timers() {
        let (_dir, store) = store();
        let mut p =
            PartitionState::open_with_window(&store, 2, TimerWindow::new(3, 8)).expect("open");
        for i in 0..40 {
            p.move_timer(&format!("u{i:02}"), None, Some((100 + i, Vec::new())));
        }
        let mut due = Vec::new();
        let mut largest = 0;
        while let Some(timer) = p.pop_due(1_000).expect("pop") {
            largest = largest.max(p.timers.entries.len());
            due.push(timer.due_ms);
        }
        assert_eq!(due, (100..140).collect::<Vec<_>>());
        assert!(largest <= 8, "the window held {largest} entries");
    }

    /// The store drops an applied offset that its own position covers, and keeps one ahead
    /// of it (a profile restored from a changelog that ran ahead); the changelog always
    /// carries it, since a reader may not see the batch's position record.
    #[test]
    fn the_store_keeps_an_applied_offset_only_while_it_is_ahead_of_the_position() {
        let (_dir, store) = store();
        let mut p = PartitionState::open(&store, 1).expect("open");
        for (user, applied) in [("covered", 16), ("ahead", 17), ("later", 40)] {
            let profile = p.profile_mut(user).expect("profile");
            profile.last_active_ms = 5;
            profile.applied_offset = Some(applied);
        }
        p.set_next_offset(17);
        let records = p.changelog_records().expect("records");
        p.flush(None).expect("flush");
        let stored = |user: &str| {
            store
                .profile(1, user)
                .expect("read")
                .map(|u| (u.last_active_ms, u.applied_offset))
        };
        assert_eq!(stored("covered"), Some((5, None)));
        assert_eq!(stored("ahead"), Some((5, Some(17))));
        assert_eq!(stored("later"), Some((5, Some(40))));
        let sent: Vec<Option<i64>> = records
            .iter()
            .filter_map(|r| match decode_entry(1, &r.key, r.value.as_deref()) {
                Ok(ChangelogEntry::Profile {
                    profile: Some(profile),
                    ..
                }) => Some(profile.applied_offset),
                _ => None,
            })
            .collect();
        assert_eq!(sent, [Some(17), Some(16), Some(40)], "in user order");
        // Without a position (none stored, none set) nothing covers the offset.
        let mut q = PartitionState::open(&store, 2).expect("open");
        q.profile_mut("x").expect("profile").applied_offset = Some(3);
        q.flush(None).expect("flush");
        assert_eq!(
            store
                .profile(2, "x")
                .expect("read")
                .map(|u| u.applied_offset),
            Some(Some(3))
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

    /// The files of a store as a crash leaves them: copied while it is open, every write
    /// returned, nothing closed.
    fn crash_image(from: &std::path::Path) -> tempfile::TempDir {
        let to = tempfile::tempdir().expect("tempdir");
        for entry in std::fs::read_dir(from).expect("read dir") {
            let path = entry.expect("entry").path();
            if let Some(name) = path.file_name() {
                std::fs::copy(&path, to.path().join(name)).expect("copy");
            }
        }
        to
    }

    /// The store holds the second of `commit_user`'s commits: "ben" at position 2.
    fn assert_holds_second_commit(store: &Store) {
        assert_eq!(store.meta(0).expect("meta").map(|m| m.next_offset), Some(2));
        assert!(store.profile(0, "ben").expect("read").is_some());
    }

    /// Commits `user` with the position `next`.
    fn commit_user(p: &mut PartitionState, user: &str, next: i64) {
        p.profile_mut(user).expect("profile").last_active_ms = next;
        p.move_timer(user, None, Some((next * 100, Vec::new())));
        p.set_next_offset(next);
        p.flush(Some(next)).expect("flush");
    }

    #[test]
    fn without_the_log_a_crash_finds_the_last_persisted_commit_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = StoreOptions {
            write_ahead_log: false,
            ..StoreOptions::default()
        };
        let store = Store::open(dir.path(), &options).expect("open");
        let mut p = PartitionState::open(&store, 0).expect("open");
        commit_user(&mut p, "ann", 1);
        store.persist().expect("persist");
        commit_user(&mut p, "ben", 2);
        let image = crash_image(dir.path());

        // The second commit was only in memtables: the crash leaves the first, all of it.
        let crashed = Store::open(image.path(), &options).expect("open image");
        let meta = crashed.meta(0).expect("meta").expect("a position");
        assert_eq!((meta.next_offset, meta.changelog_next), (1, Some(1)));
        assert!(crashed.profile(0, "ann").expect("read").is_some());
        assert_eq!(crashed.profile(0, "ben").expect("read"), None);
        assert_eq!(
            crashed.timers_between(0, 0, 1_000).expect("timers"),
            vec![(100, "ann".to_string())]
        );
        assert_eq!(meta.pending_timers, 1);

        // A clean stop persists: the restart finds the last commit.
        drop(crashed);
        drop(p);
        store.persist().expect("persist");
        let image = crash_image(dir.path());
        let reopened = Store::open(image.path(), &options).expect("open image");
        assert_holds_second_commit(&reopened);
    }

    #[test]
    fn with_the_log_a_crash_keeps_every_commit() {
        let (dir, store) = store();
        let mut p = PartitionState::open(&store, 0).expect("open");
        commit_user(&mut p, "ann", 1);
        commit_user(&mut p, "ben", 2);
        let image = crash_image(dir.path());
        let crashed = Store::open(image.path(), &StoreOptions::default()).expect("open image");
        assert_holds_second_commit(&crashed);
    }

    #[test]
    fn take_due_merges_stored_and_buffered_timers_once() {
        let (_dir, store) = store();
        let mut p = PartitionState::open(&store, 1).expect("open");
        p.move_timer("a", None, Some((10, Vec::new())));
        p.move_timer("b", None, Some((30, Vec::new())));
        p.move_timer("c", None, Some((20, Vec::new())));
        p.flush(None).expect("flush");
        // In the next batch: c moves later, d is new and early.
        p.move_timer("c", Some(20), Some((40, Vec::new())));
        p.move_timer("d", None, Some((5, Vec::new())));
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
        p.move_timer("a", None, Some((12, Vec::new())));
        assert_eq!(p.take_due(35).expect("re-armed").len(), 1);
        assert!(p.may_have_due(40));
        p.flush(None).expect("flush");
        assert_eq!(p.meta().pending_timers, 1, "the count follows the index");
        assert_eq!(
            store.timers_between(1, i64::MIN, i64::MAX).expect("timers"),
            vec![(40, "c".to_string())]
        );
    }

    fn store_with_cache(users: usize) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = StoreOptions {
            profile_cache_users: users,
            ..StoreOptions::default()
        };
        let store = Store::open(dir.path(), &options).expect("open");
        (dir, store)
    }

    #[test]
    fn the_profile_cache_stays_within_its_share_and_keeps_recent_users() {
        let (_dir, store) = store_with_cache(100);
        let mut p = PartitionState::open(&store, 0).expect("open");
        for batch in 0..10 {
            for user in 0..50 {
                p.profile_mut(&format!("u{batch}-{user}"))
                    .expect("profile")
                    .last_active_ms = batch;
            }
            p.set_next_offset(batch);
            p.flush(None).expect("flush");
            assert!(p.cached_profiles() <= 100, "{}", p.cached_profiles());
        }
        // The latest batch's users are cached; evicted ones still read back from RocksDB.
        assert!(p.profiles.holds("u9-0"));
        assert!(!p.profiles.holds("u0-0"));
        assert_eq!(p.profile_mut("u0-7").expect("profile").last_active_ms, 0);
        assert_eq!(p.dirty_profiles(), 1);
        // A second open partition halves every partition's share.
        let q = PartitionState::open(&store, 1).expect("open");
        assert_eq!(store.profile_cache_share(), 50);
        drop(q);
        assert_eq!(store.profile_cache_share(), 100);
    }

    /// Profiles out of the decoded cache read back from their stored forms kept in memory,
    /// not from RocksDB, as the flush wrote them; the forms stay within their byte share,
    /// and a deleted user's form goes with it.
    #[test]
    fn written_profiles_read_back_from_their_stored_forms_within_the_byte_share() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = StoreOptions {
            profile_cache_users: 0,
            profile_cache_bytes: 64 << 10,
            ..StoreOptions::default()
        };
        let store = Store::open(dir.path(), &options).expect("open");
        let mut p = PartitionState::open(&store, 0).expect("open");
        for user in 0..2_000 {
            let profile = p.profile_mut(&format!("u{user}")).expect("profile");
            profile.last_active_ms = 1_000 + user;
            profile.applied_offset = Some(user);
        }
        p.set_next_offset(5_000);
        p.flush(None).expect("flush");
        assert!(
            p.stored_profile_bytes() <= 64 << 10,
            "{}",
            p.stored_profile_bytes()
        );
        let kept: Vec<i64> = (0..2_000)
            .filter(|u| p.profiles.is_warm(&format!("u{u}")))
            .collect();
        assert!(kept.len() > 100, "{} kept", kept.len());
        assert!(kept.len() < 2_000, "the share held them all");
        // Remove the users from RocksDB behind the cache's back: what reads back is the
        // stored form in memory, whole (its applied offset too).
        let profiles_cf = store.cf(CF_PROFILES).expect("cf");
        for &user in &kept {
            let key = profile_key(0, &format!("u{user}"));
            store.db().delete_cf(profiles_cf, key).expect("delete");
        }
        let user = kept[kept.len() / 2];
        let read = p.profile_mut(&format!("u{user}")).expect("profile").clone();
        assert_eq!(
            (read.last_active_ms, read.applied_offset),
            (1_000 + user, Some(user))
        );
        // Deleted, it does not come back from memory.
        p.delete_profile(&format!("u{user}"));
        p.flush(None).expect("flush");
        assert!(!p.profiles.is_warm(&format!("u{user}")));
        assert_eq!(
            p.profile_mut(&format!("u{user}"))
                .expect("profile")
                .last_active_ms,
            0
        );
    }

    /// A clock advance can fire timers for more users than the cache holds; memory stays
    /// bounded inside the batch and no change is lost or written twice.
    #[test]
    fn a_batch_touching_more_users_than_the_cache_holds_spills_and_loses_nothing() {
        let (_dir, store) = store_with_cache(100);
        let mut p = PartitionState::open(&store, 0).expect("open");
        p.profile_mut("stored").expect("profile").last_active_ms = 1;
        p.flush(None).expect("flush");
        let users = 3 * MIN_BATCH_PROFILES;
        for i in 0..users {
            p.profile_mut(&format!("u{i}"))
                .expect("profile")
                .last_active_ms = 1_000 + i as i64;
            assert!(
                p.cached_profiles() <= MIN_BATCH_PROFILES,
                "{}",
                p.cached_profiles()
            );
        }
        assert!(p.profiles.spilled() > 0, "the batch outgrew the map");
        let mut spilled = (0..users).filter(|i| p.profiles.is_spilled(&format!("u{i}")));
        let (back, gone) = (
            spilled.next().expect("a spilled user"),
            spilled.next().expect("another"),
        );
        // A spilled change reads back in the same batch and is counted once.
        let back_user = format!("u{back}");
        assert_eq!(
            p.profile_mut(&back_user).expect("profile").last_active_ms,
            1_000 + back as i64
        );
        p.profile_mut(&back_user).expect("profile").first_active_ms = 7;
        assert_eq!(p.dirty_profiles(), users);
        // A spilled user deleted in the batch is not written.
        p.delete_profile(&format!("u{gone}"));
        assert_eq!(p.dirty_profiles(), users - 1);
        assert_eq!(p.profile_mut("stored").expect("profile").last_active_ms, 1);

        let records = p.changelog_records().expect("records");
        let written: Vec<_> = records
            .iter()
            .filter_map(|r| match decode_entry(0, &r.key, r.value.as_deref()) {
                Ok(ChangelogEntry::Profile { user_id, profile }) => {
                    Some((user_id, profile.map(|p| p.last_active_ms)))
                }
                _ => None,
            })
            .collect();
        // Every changed user once, the deleted one as a tombstone.
        assert_eq!(written.len(), users + 1);
        assert_eq!(written.iter().filter(|(_, p)| p.is_none()).count(), 1);
        p.flush(None).expect("flush");
        assert!(p.cached_profiles() <= 100);
        for i in (0..users).filter(|i| *i != gone) {
            let stored = store.profile(0, &format!("u{i}")).expect("read");
            assert_eq!(
                stored.map(|s| s.last_active_ms),
                Some(1_000 + i as i64),
                "u{i}"
            );
        }
        assert_eq!(
            store
                .profile(0, &back_user)
                .expect("read")
                .map(|s| s.first_active_ms),
            Some(7)
        );
        assert_eq!(store.profile(0, &format!("u{gone}")).expect("read"), None);
    }

    #[test]
    fn a_cached_profile_is_written_only_when_changed_again() {
        let (_dir, store) = store();
        let mut p = PartitionState::open(&store, 0).expect("open");
        p.profile_mut("erin").expect("profile").last_active_ms = 3;
        p.set_next_offset(1);
        assert_eq!(p.changelog_records().expect("records").len(), 2);
        p.flush(None).expect("flush");
        p.set_next_offset(2);
        assert_eq!(
            p.changelog_records().expect("records").len(),
            1,
            "only the position: the cached profile is clean"
        );
        p.profile_mut("erin").expect("profile").last_active_ms = 4;
        p.flush(None).expect("flush");
        assert_eq!(
            store
                .profile(0, "erin")
                .expect("read")
                .map(|u| u.last_active_ms),
            Some(4)
        );
    }

    #[test]
    fn a_user_deleted_and_back_within_a_batch_is_written_once() {
        let (_dir, store) = store();
        let mut p = PartitionState::open(&store, 0).expect("open");
        p.profile_mut("fay").expect("profile").last_active_ms = 1;
        p.delete_profile("fay");
        p.profile_mut("fay").expect("profile").last_active_ms = 2;
        assert_eq!(p.dirty_profiles(), 1);
        p.set_next_offset(3);
        let records = p.changelog_records().expect("records");
        assert_eq!(
            records.len(),
            2,
            "one profile and the position: {records:?}"
        );
        p.flush(None).expect("flush");
        assert_eq!(
            store
                .profile(0, "fay")
                .expect("read")
                .map(|u| u.last_active_ms),
            Some(2)
        );
    }

    proptest::proptest! {
        /// Whatever the moves, takes and flushes, and however small the in-memory window,
        /// the timers handed out are exactly those of a plain in-memory index.
        #[test]
        fn the_timer_window_agrees_with_a_plain_index(
            ops in proptest::collection::vec((0u8..5, 0usize..40, 0i64..200), 1..300),
            spread in proptest::bool::ANY,
        ) {
            // Times a unit apart, or about a quarter of an hour: the index's order must hold
            // whatever the scale of its times.
            let unit: i64 = if spread { 1 << 20 } else { 1 };
            let (_dir, store) = store();
            let window = || TimerWindow::new(3, 8);
            let mut p = PartitionState::open_with_window(&store, 2, window()).expect("open");
            // Each user's entry: its time and value.
            let mut model: std::collections::BTreeMap<String, (i64, Vec<u8>)> = Default::default();
            let mut now = 0i64;
            for (op, user, t) in ops {
                let id = format!("u{user}");
                match op {
                    0 | 1 => {
                        // Ten times only, so that a user comes back to a time it had
                        // earlier in the batch or in the store; one before the clock, as an
                        // event older than the clock arms.
                        let to = (op == 0).then(|| {
                            (now + (t % 10 - 1) * 20 * unit, vec![(t % 7) as u8; (t % 3) as usize])
                        });
                        let from = model.get(&id).map(|(d, _)| *d);
                        p.move_timer(&id, from, to.clone());
                        match to {
                            Some(to) => model.insert(id, to),
                            None => model.remove(&id),
                        };
                    }
                    2 => {
                        now += t / 4 * unit;
                        // As the engine does before it fires what is due: the flush removes
                        // fired entries up to the clock with a range deletion.
                        p.set_clock_ms(now);
                        let got: Vec<(i64, String, Vec<u8>)> = p
                            .take_due(now)
                            .expect("take")
                            .into_iter()
                            .map(|d| (d.due_ms, d.user_id, d.value))
                            .collect();
                        let mut want: Vec<(i64, String, Vec<u8>)> = model
                            .iter()
                            .filter(|(_, (d, _))| *d <= now)
                            .map(|(u, (d, v))| (*d, u.clone(), v.clone()))
                            .collect();
                        want.sort();
                        model.retain(|_, (d, _)| *d > now);
                        proptest::prop_assert_eq!(got, want);
                    }
                    3 if user % 10 == 0 => {
                        p.clear_timers().expect("clear");
                        model.clear();
                    }
                    _ => {
                        p.set_next_offset(now);
                        p.flush(None).expect("flush");
                        if user % 3 == 0 {
                            // Reopen: the window is rebuilt from RocksDB.
                            drop(p);
                            p = PartitionState::open_with_window(&store, 2, window())
                                .expect("open");
                        }
                    }
                }
                proptest::prop_assert_eq!(p.meta().pending_timers, model.len() as i64);
                if model.values().any(|(d, _)| *d <= now) {
                    proptest::prop_assert!(p.may_have_due(now));
                }
            }
            // What the flushes wrote is the index itself: no entry left behind by a move
            // within a batch, none missing.
            p.flush(None).expect("flush");
            let mut want: Vec<((i64, String), Vec<u8>)> =
                model.iter().map(|(u, (d, v))| ((*d, u.clone()), v.clone())).collect();
            want.sort();
            let stored = store.timer_entries_between(2, i64::MIN, i64::MAX).expect("timers");
            proptest::prop_assert_eq!(stored, want);
        }
    }
}
