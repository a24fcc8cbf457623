//! A partition's profiles in memory: the current batch's changes and, across batches,
//! recently used profiles while the cache has room, decoded, and behind them many more in
//! their stored form.
//!
//! A decoded profile takes over a kilobyte, its stored form about a hundred bytes. Between
//! batches the decoded map keeps its share of `state.profile_cache_users`; every profile a
//! flush wrote also stays in its stored form (the bytes the flush already encoded, with its
//! applied offset, so that it decodes to exactly the profile in memory) within the share of
//! `state.profile_cache_bytes` ([`WarmProfiles`]), so that a user who comes back costs a
//! decode instead of a RocksDB read: a search of the memtables, a bloom filter, an index
//! and a block, several microseconds. The stored forms are dropped by a clock sweep: a form
//! read since the last sweep survives it once. Like the decoded profiles they are copies of
//! what RocksDB holds.
//!
//! Memory stays bounded even inside one batch: at most twice the cache's share. A batch can
//! touch far more users than its records name: a clock advance fires every timer due, and
//! on a day boundary that can be a large part of the partition. When the map reaches that
//! bound, unchanged profiles go first (RocksDB holds them); if the batch's own changes still
//! do not fit, some are kept encoded (about a fifth of their decoded size) until the flush
//! writes them.

use foldhash::fast::RandomState;
use foldhash::HashSet;
use hashbrown::hash_map::EntryRef;
use rekindle_rules::UserProfile;

use crate::error::decode_profile;
use crate::warm::WarmProfiles;
use crate::{StateError, Store};

/// Profiles the map may hold within a batch whatever the configured share, so that a tiny
/// share does not turn every lookup into an encode and a decode.
pub(crate) const MIN_BATCH_PROFILES: usize = 1_024;

/// A changed profile as a commit writes it.
pub(crate) struct EncodedProfile {
    /// The whole stored form, as the changelog carries it.
    pub(crate) bytes: Vec<u8>,
    /// Where the applied offset starts (the end without one).
    body: usize,
    applied_offset: Option<i64>,
}

impl EncodedProfile {
    pub(crate) fn of(profile: &UserProfile) -> Result<EncodedProfile, StateError> {
        let mut bytes = Vec::with_capacity(rekindle_rules::ENCODED_PROFILE_BYTES);
        let body = encode_into(profile, &mut bytes)?;
        Ok(EncodedProfile {
            bytes,
            body,
            applied_offset: profile.applied_offset,
        })
    }
}

/// Appends the profile's stored form to `out`; returns its length without the applied
/// offset.
fn encode_into(profile: &UserProfile, out: &mut Vec<u8>) -> Result<usize, StateError> {
    rekindle_rules::encode_profile(profile, out).map_err(|e| StateError::Encode {
        what: "profile",
        reason: e.to_string(),
    })
}

/// The batch's changed profiles as a commit writes them, in user order: every id in one
/// string and every stored form in one buffer. The flush, the changelog and the stored-form
/// cache only read them, so one allocation each for the batch replaces an id and a buffer
/// per profile, and sorting moves small entries instead of strings.
#[derive(Default)]
pub(crate) struct EncodedBatch {
    ids: String,
    bytes: Vec<u8>,
    entries: Vec<EncodedEntry>,
}

struct EncodedEntry {
    id: std::ops::Range<usize>,
    /// The whole stored form, as the changelog carries it.
    bytes: std::ops::Range<usize>,
    /// Its length without the applied offset.
    body: usize,
    applied_offset: Option<i64>,
}

/// One profile of an [`EncodedBatch`].
pub(crate) struct EncodedRef<'a> {
    /// The whole stored form, with the applied offset if the profile has one.
    pub(crate) bytes: &'a [u8],
    body: usize,
    applied_offset: Option<i64>,
}

impl EncodedRef<'_> {
    /// What the store keeps when the same write moves the partition's position to
    /// `next_offset`: without the applied offset when it lies below that position. The
    /// offset only tells a profile that is ahead of its partition's stored position (one
    /// restored from a changelog that ran ahead) which events to skip; a profile written
    /// with a position past all its events has none to skip. Read back, it has no offset,
    /// which means exactly that.
    pub(crate) fn stored(&self, next_offset: Option<i64>) -> &[u8] {
        match (self.applied_offset, next_offset) {
            (Some(applied), Some(next)) if applied < next => {
                self.bytes.get(..self.body).unwrap_or(self.bytes)
            }
            _ => self.bytes,
        }
    }
}

impl EncodedBatch {
    fn with_capacity(profiles: usize) -> EncodedBatch {
        EncodedBatch {
            ids: String::with_capacity(profiles * 16),
            bytes: Vec::with_capacity(profiles * rekindle_rules::ENCODED_PROFILE_BYTES),
            entries: Vec::with_capacity(profiles),
        }
    }

    fn encode(&mut self, user_id: &str, profile: &UserProfile) -> Result<(), StateError> {
        let start = self.bytes.len();
        let body = encode_into(profile, &mut self.bytes)?;
        self.push_entry(user_id, start, body, profile.applied_offset);
        Ok(())
    }

    fn copy(&mut self, user_id: &str, encoded: &EncodedProfile) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&encoded.bytes);
        self.push_entry(user_id, start, encoded.body, encoded.applied_offset);
    }

    /// Records the stored form appended to `bytes` from `start` as `user_id`'s.
    fn push_entry(&mut self, user_id: &str, start: usize, body: usize, applied: Option<i64>) {
        let id_start = self.ids.len();
        self.ids.push_str(user_id);
        self.entries.push(EncodedEntry {
            id: id_start..self.ids.len(),
            bytes: start..self.bytes.len(),
            body,
            applied_offset: applied,
        });
    }

    fn id(&self, entry: &EncodedEntry) -> &str {
        // Ranges this batch cut at the ends of whole ids: always on character boundaries.
        self.ids.get(entry.id.clone()).unwrap_or_default()
    }

    fn sort(&mut self) {
        let mut entries = std::mem::take(&mut self.entries);
        entries.sort_unstable_by(|a, b| self.id(a).cmp(self.id(b)));
        self.entries = entries;
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The bytes of every id and stored form together.
    pub(crate) fn data_bytes(&self) -> usize {
        self.ids.len() + self.bytes.len()
    }

    /// Each profile with its user id, in user order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, EncodedRef<'_>)> {
        self.entries.iter().map(|entry| {
            (
                self.id(entry),
                EncodedRef {
                    bytes: self.bytes.get(entry.bytes.clone()).unwrap_or_default(),
                    body: entry.body,
                    applied_offset: entry.applied_offset,
                },
            )
        })
    }
}

/// A profile held in memory, across batches while the cache has room.
struct Cached {
    /// Boxed: the map's slots stay small, so growing the map copies little.
    profile: Box<UserProfile>,
    /// Changed in the current batch: written at the next flush.
    dirty: bool,
    /// The batch that last used it, for eviction (least recently used batches go first).
    used: u64,
}

#[derive(Default)]
pub(crate) struct ProfileCache {
    map: hashbrown::HashMap<String, Cached, RandomState>,
    /// Entries of `map` marked dirty. The batch's changed users are those and `spilled`:
    /// no list of ids, so marking a user costs no copy of its id, and the flush walks the
    /// map's slots in memory order instead of looking each id up again.
    dirty_in_map: usize,
    /// Users deleted this batch: their profiles are removed at flush.
    deleted: HashSet<String>,
    /// Changed profiles moved out of `map` within the batch, encoded as they will be
    /// written.
    spilled: hashbrown::HashMap<String, EncodedProfile, RandomState>,
    /// Profiles as the last flushes wrote them, between batches (see the module comment).
    warm: WarmProfiles,
}

impl ProfileCache {
    /// The user's profile, read from `store` unless in memory, marked changed in this batch.
    /// `share`: the profiles this cache keeps between batches; it holds at most twice that
    /// within one (see the module comment).
    pub(crate) fn get_mut(
        &mut self,
        store: &Store,
        partition: u32,
        batch: u64,
        share: usize,
        user_id: &str,
    ) -> Result<&mut UserProfile, StateError> {
        // Twice the share: a batch's own users come on top of those kept from earlier
        // batches, which serve returning users until the commit trims the map to its share.
        let limit = share.saturating_mul(2).max(MIN_BATCH_PROFILES);
        if self.map.len() >= limit {
            // Down to 90 % of the limit, so that this happens once per tenth of it. It may
            // take out `user_id` itself, which is then read back like any other.
            self.make_room(limit - limit / 10)?;
        }
        // One lookup; the id is copied into the map only for a user not in it.
        let entry = match self.map.entry_ref(user_id) {
            EntryRef::Occupied(entry) => entry.into_mut(),
            EntryRef::Vacant(entry) => {
                let (profile, dirty) = if let Some(spilled) = self.spilled.remove(user_id) {
                    // Changed earlier in this batch: still changed.
                    (
                        decode_profile("spilled profile", partition, &spilled.bytes)?,
                        true,
                    )
                } else if self.deleted.remove(user_id) {
                    // A user deleted earlier in this batch starts afresh, whatever is stored.
                    (UserProfile::default(), false)
                } else if let Some(stored) = self.warm.get(user_id) {
                    (decode_profile("profile", partition, stored)?, false)
                } else {
                    (
                        store.profile(partition, user_id)?.unwrap_or_default(),
                        false,
                    )
                };
                if dirty {
                    self.dirty_in_map += 1;
                }
                entry.insert(Cached {
                    profile: Box::new(profile),
                    dirty,
                    used: batch,
                })
            }
        };
        entry.used = batch;
        if !entry.dirty {
            entry.dirty = true;
            self.dirty_in_map += 1;
        }
        Ok(&mut entry.profile)
    }

    /// Forgets a user: the profile is removed at flush.
    pub(crate) fn delete(&mut self, user_id: &str) {
        if self.map.remove(user_id).is_some_and(|c| c.dirty) {
            self.dirty_in_map -= 1;
        }
        self.spilled.remove(user_id);
        self.warm.remove(user_id);
        self.deleted.insert(user_id.to_string());
    }

    /// Users changed in the current batch.
    pub(crate) fn changed(&self) -> usize {
        self.dirty_in_map + self.spilled.len()
    }

    /// Profiles held decoded (changed or not).
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn is_dirty(&self) -> bool {
        self.changed() > 0 || !self.deleted.is_empty()
    }

    pub(crate) fn deleted(&self) -> impl Iterator<Item = &String> {
        self.deleted.iter()
    }

    /// The batch's changed profiles, encoded, in user order: RocksDB's memtable inserts a
    /// sorted run next to the previous key instead of searching its skip list from the top
    /// for each one.
    pub(crate) fn encode_changed(&self) -> Result<EncodedBatch, StateError> {
        let mut encoded = EncodedBatch::with_capacity(self.changed());
        for (user, entry) in self.map.iter().filter(|(_, e)| e.dirty) {
            encoded.encode(user, &entry.profile)?;
        }
        for (user, spilled) in &self.spilled {
            encoded.copy(user, spilled);
        }
        encoded.sort();
        Ok(encoded)
    }

    /// After the batch was written: everything in memory is a clean copy again, cut to 90 %
    /// of `share` when over it. `written`: the profiles the flush wrote, whose stored forms
    /// stay within `warm_share` bytes.
    pub(crate) fn settle(&mut self, share: usize, written: &EncodedBatch, warm_share: usize) {
        if warm_share > 0 {
            for (user, encoded) in written.iter() {
                self.warm.insert(user, encoded.bytes);
            }
            if self.warm.memory() > warm_share {
                self.warm.sweep(warm_share - warm_share / 10);
            }
        } else if self.warm.len() > 0 {
            self.warm.clear();
        }
        if self.dirty_in_map > 0 {
            self.map.values_mut().for_each(|entry| entry.dirty = false);
            self.dirty_in_map = 0;
        }
        self.deleted.clear();
        self.spilled = Default::default();
        if self.map.len() > share {
            self.evict_clean(share - share / 10);
        }
    }

    /// Brings the map down to `target` entries within a batch: unchanged profiles first,
    /// then changed ones, encoded into `spilled`.
    fn make_room(&mut self, target: usize) -> Result<(), StateError> {
        self.evict_clean(target);
        let excess = self.map.len().saturating_sub(target);
        if excess == 0 {
            return Ok(());
        }
        let mut moved = Vec::with_capacity(excess);
        for (user, cached) in self.map.extract_if(|_, c| c.dirty).take(excess) {
            moved.push((user, cached.profile));
        }
        self.dirty_in_map -= moved.len();
        for (user, profile) in moved {
            self.spilled.insert(user, EncodedProfile::of(&profile)?);
        }
        Ok(())
    }

    /// Drops unchanged entries, least recently used batches first, until at most `target`
    /// remain or none unchanged is left.
    fn evict_clean(&mut self, target: usize) {
        if self.map.len() <= target {
            return;
        }
        let mut ages: Vec<u64> = self
            .map
            .values()
            .filter(|c| !c.dirty)
            .map(|c| c.used)
            .collect();
        let drop = (self.map.len() - target).min(ages.len());
        if drop == 0 {
            return;
        }
        if drop == ages.len() {
            self.map.retain(|_, c| c.dirty);
            return;
        }
        let (_, first_kept, _) = ages.select_nth_unstable(drop);
        let threshold = *first_kept;
        // Entries used before the threshold batch all go; ties at it go until enough have.
        let below = ages.iter().filter(|&&a| a < threshold).count();
        let mut at_threshold = drop - below;
        self.map.retain(|_, c| {
            if c.dirty || c.used > threshold {
                true
            } else if c.used < threshold {
                false
            } else if at_threshold > 0 {
                at_threshold -= 1;
                false
            } else {
                true
            }
        });
    }

    #[cfg(test)]
    pub(crate) fn holds(&self, user_id: &str) -> bool {
        self.map.contains_key(user_id)
    }

    pub(crate) fn warm_memory(&self) -> usize {
        self.warm.memory()
    }

    #[cfg(test)]
    pub(crate) fn is_warm(&self, user_id: &str) -> bool {
        self.warm.contains(user_id)
    }

    #[cfg(test)]
    pub(crate) fn spilled(&self) -> usize {
        self.spilled.len()
    }

    #[cfg(test)]
    pub(crate) fn is_spilled(&self, user_id: &str) -> bool {
        self.spilled.contains_key(user_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(last_active_ms: i64, applied_offset: Option<i64>) -> UserProfile {
        UserProfile {
            last_active_ms,
            first_active_ms: last_active_ms - 1_000,
            applied_offset,
            ..UserProfile::default()
        }
    }

    #[test]
    fn a_commit_encodes_changed_and_spilled_profiles_in_user_order() {
        let mut cache = ProfileCache::default();
        for (i, user) in ["dave", "bob", "erin", "ann"].into_iter().enumerate() {
            let dirty = user != "erin";
            cache.map.insert(
                user.to_string(),
                Cached {
                    profile: Box::new(profile(1_000 * i as i64, None)),
                    dirty,
                    used: 0,
                },
            );
            cache.dirty_in_map += usize::from(dirty);
        }
        for user in ["carol", "aaron"] {
            let encoded = EncodedProfile::of(&profile(5_000, Some(3))).expect("encode");
            cache.spilled.insert(user.to_string(), encoded);
        }
        let batch = cache.encode_changed().expect("encode");
        let ids: Vec<&str> = batch.iter().map(|(id, _)| id).collect();
        assert_eq!(ids, ["aaron", "ann", "bob", "carol", "dave"]);
    }

    #[test]
    fn an_encoded_batch_holds_each_profile_in_user_order_as_encoded_alone() {
        let profiles = [
            ("carol", profile(30_000, Some(7))),
            ("ann", profile(10_000, None)),
            ("bob-ü", profile(20_000, Some(12))),
        ];
        let mut batch = EncodedBatch::with_capacity(1);
        batch.encode(profiles[0].0, &profiles[0].1).expect("encode");
        let spilled = EncodedProfile::of(&profiles[1].1).expect("encode");
        batch.copy(profiles[1].0, &spilled);
        batch.encode(profiles[2].0, &profiles[2].1).expect("encode");
        batch.sort();
        let ids: Vec<&str> = batch.iter().map(|(id, _)| id).collect();
        assert_eq!(ids, ["ann", "bob-ü", "carol"]);
        assert_eq!(batch.len(), 3);
        for (id, encoded) in batch.iter() {
            let (_, profile) = profiles.iter().find(|(p, _)| *p == id).expect("known id");
            let alone = EncodedProfile::of(profile).expect("encode");
            assert_eq!(encoded.bytes, &alone.bytes[..], "{id}");
            let decoded = decode_profile("test", 0, encoded.bytes).expect("decode");
            assert_eq!(&decoded, profile, "{id}");
            // Below the position the applied offset is left out; at or past it, kept.
            let without = encoded.stored(Some(100));
            assert_eq!(without, &alone.bytes[..alone.body], "{id}");
            assert_eq!(
                decode_profile("test", 0, without)
                    .expect("decode")
                    .applied_offset,
                None
            );
            assert_eq!(encoded.stored(Some(7)), encoded.bytes, "{id}");
            assert_eq!(encoded.stored(None), encoded.bytes, "{id}");
        }
        assert_eq!(
            batch.data_bytes(),
            "annbob-ücarol".len() + batch.iter().map(|(_, e)| e.bytes.len()).sum::<usize>()
        );
    }
}
