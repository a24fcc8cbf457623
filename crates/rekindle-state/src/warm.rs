//! Profiles in their stored form, between batches: behind the decoded profile cache, many
//! more users per byte (about 150 bytes each with their id, against over a kilobyte
//! decoded), read back with a decode instead of a RocksDB lookup.
//!
//! Each entry is one allocation holding a flag byte, the id's length, the id and the stored
//! form, in a table of thin slots: a map of `String` to `Vec<u8>` would spend three
//! allocations and a 48-byte slot on every user, more than the stored form itself.

use foldhash::fast::RandomState;
use hashbrown::HashTable;
use std::hash::BuildHasher;

/// Bytes before the id: the flag, then the id's length (u32, little-endian).
const HEADER: usize = 5;

/// Allocations are rounded up to this by the allocator, near enough for accounting.
const ALLOCATION_GRAIN: usize = 16;

#[derive(Default)]
pub(crate) struct WarmProfiles {
    table: HashTable<Box<[u8]>>,
    hasher: RandomState,
    /// The entries' allocations, rounded to [`ALLOCATION_GRAIN`].
    entry_bytes: usize,
}

fn id_of(entry: &[u8]) -> &[u8] {
    let len = entry
        .get(1..HEADER)
        .and_then(|b| b.try_into().ok())
        .map_or(0, |b| u32::from_le_bytes(b) as usize);
    entry.get(HEADER..HEADER + len).unwrap_or_default()
}

/// An entry's hash, by its id: what the table rehashes with when it grows or shrinks.
fn entry_hash(hasher: &RandomState, entry: &[u8]) -> u64 {
    hasher.hash_one(id_of(entry))
}

/// The table's slots for `len` entries when full: a pointer and a control byte each, at
/// most seven eighths used (power-of-two growth can double that).
fn slot_bytes(len: usize) -> usize {
    (len * (std::mem::size_of::<Box<[u8]>>() + 1)).div_ceil(7) * 8 + ALLOCATION_GRAIN
}

fn charged(entry: &[u8]) -> usize {
    entry.len().next_multiple_of(ALLOCATION_GRAIN)
}

impl WarmProfiles {
    fn hash(&self, id: &[u8]) -> u64 {
        self.hasher.hash_one(id)
    }

    /// Memory held: the entries and the table's slots.
    pub(crate) fn memory(&self) -> usize {
        self.entry_bytes + self.table.allocation_size()
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// The user's stored form, marked as read (spared by the next sweep).
    pub(crate) fn get(&mut self, user_id: &str) -> Option<&[u8]> {
        let id = user_id.as_bytes();
        let hash = self.hash(id);
        let entry = self.table.find_mut(hash, |e| id_of(e) == id)?;
        entry[0] = 1;
        Some(&entry[HEADER + id.len()..])
    }

    /// Keeps `stored` as the user's stored form, replacing any earlier one. An id longer
    /// than four billion bytes is not kept (no Kafka key is).
    pub(crate) fn insert(&mut self, user_id: &str, stored: &[u8]) {
        let id = user_id.as_bytes();
        let Ok(id_len) = u32::try_from(id.len()) else {
            return;
        };
        let hash = self.hash(id);
        // A profile's stored form mostly keeps its length from one commit to the next:
        // written over in place, without an allocation and a free per user and commit.
        let len = HEADER + id.len() + stored.len();
        if let Some(old) = self.table.find_mut(hash, |e| id_of(e) == id) {
            if old.len() == len {
                if let Some(form) = old.get_mut(HEADER + id.len()..) {
                    form.copy_from_slice(stored);
                }
                if let Some(flag) = old.first_mut() {
                    *flag = 0;
                }
                return;
            }
        }
        let mut entry = Vec::with_capacity(len);
        entry.push(0);
        entry.extend_from_slice(&id_len.to_le_bytes());
        entry.extend_from_slice(id);
        entry.extend_from_slice(stored);
        let entry = entry.into_boxed_slice();
        self.entry_bytes += charged(&entry);
        let hasher = &self.hasher;
        match self
            .table
            .entry(hash, |e| id_of(e) == id, |e| entry_hash(hasher, e))
        {
            hashbrown::hash_table::Entry::Occupied(mut old) => {
                self.entry_bytes -= charged(old.get());
                *old.get_mut() = entry;
            }
            hashbrown::hash_table::Entry::Vacant(slot) => {
                slot.insert(entry);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, user_id: &str) -> bool {
        let id = user_id.as_bytes();
        self.table.find(self.hash(id), |e| id_of(e) == id).is_some()
    }

    pub(crate) fn remove(&mut self, user_id: &str) {
        let id = user_id.as_bytes();
        let hash = self.hash(id);
        if let Ok(entry) = self.table.find_entry(hash, |e| id_of(e) == id) {
            let (removed, _) = entry.remove();
            self.entry_bytes -= charged(&removed);
        }
    }

    /// Drops entries until [`WarmProfiles::memory`] is at most `target`: first those not
    /// read since the last sweep (clearing the mark of those read, in the table's order),
    /// then, if that was not enough, any. The table keeps its slots for the users that come
    /// next unless it holds more than twice the slots those left need, when it shrinks.
    pub(crate) fn sweep(&mut self, target: usize) {
        let fits = |bytes: usize, len: usize| bytes + 2 * slot_bytes(len) <= target;
        for _ in 0..2 {
            let (mut bytes, mut len) = (self.entry_bytes, self.table.len());
            self.table.retain(|entry| {
                if fits(bytes, len) || std::mem::take(&mut entry[0]) == 1 {
                    return true;
                }
                bytes -= charged(entry);
                len -= 1;
                false
            });
            self.entry_bytes = bytes;
            if fits(bytes, len) {
                break;
            }
        }
        if self.table.allocation_size() > 2 * slot_bytes(self.table.len()) {
            let hasher = &self.hasher;
            self.table
                .shrink_to(self.table.len(), |e| entry_hash(hasher, e));
        }
    }

    pub(crate) fn clear(&mut self) {
        self.table = HashTable::new();
        self.entry_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_replaces_and_forgets_stored_forms() {
        let mut warm = WarmProfiles::default();
        warm.insert("ann", b"one");
        warm.insert("bob", b"");
        warm.insert("ann", b"three");
        assert_eq!(warm.len(), 2);
        assert_eq!(warm.get("ann"), Some(&b"three"[..]));
        assert_eq!(warm.get("bob"), Some(&b""[..]));
        assert_eq!(warm.get("an"), None);
        warm.remove("ann");
        assert_eq!(warm.get("ann"), None);
        assert_eq!(warm.entry_bytes, 16, "bob's entry alone");
        warm.clear();
        assert_eq!(warm.memory(), 0);
    }

    #[test]
    fn a_form_of_the_same_length_is_written_over_in_place() {
        let mut warm = WarmProfiles::default();
        warm.insert("ann", b"abc");
        let bytes = warm.entry_bytes;
        assert_eq!(warm.get("ann"), Some(&b"abc"[..]));
        let read_mark = |warm: &WarmProfiles| {
            let id = b"ann";
            warm.table
                .find(warm.hash(id), |e| id_of(e) == id)
                .map(|e| e[0])
        };
        assert_eq!(read_mark(&warm), Some(1));
        warm.insert("ann", b"xyz");
        assert_eq!(warm.entry_bytes, bytes, "the same entry, charged once");
        assert_eq!(warm.len(), 1);
        // Written anew, it counts as not read since, as a new entry would.
        assert_eq!(read_mark(&warm), Some(0));
        assert_eq!(warm.get("ann"), Some(&b"xyz"[..]));
    }

    #[test]
    fn a_sweep_spares_what_was_read_since_the_last() {
        let mut warm = WarmProfiles::default();
        for i in 0..1000 {
            warm.insert(&format!("user-{i:05}"), &[7; 80]);
        }
        let full = warm.memory();
        assert!(full >= 1000 * 96, "{full}");
        for i in 0..100 {
            assert!(warm.get(&format!("user-{i:05}")).is_some());
        }
        let target = full / 2;
        warm.sweep(target);
        assert!(warm.memory() <= target, "{} > {target}", warm.memory());
        for i in 0..100 {
            assert!(
                warm.get(&format!("user-{i:05}")).is_some(),
                "read ones stay"
            );
        }
        // A target below what the table's slots take empties it.
        warm.sweep(0);
        assert_eq!(warm.len(), 0);
        assert_eq!(warm.entry_bytes, 0);
    }
}
