//! Durable per-partition state in RocksDB. No other crate depends on `rocksdb`.
//!
//! One database per worker, three column families, every key prefixed by the partition:
//!
//! | family     | key                                   | value                         |
//! |------------|---------------------------------------|-------------------------------|
//! | `profiles` | partition, user id                    | the user's profile (postcard) |
//! | `timers`   | partition, due time (ordered), user id| empty                         |
//! | `meta`     | partition                             | next offset, clock, counts, changelog position |
//!
//! Profile values are postcard, with the activity buckets in a compact layout of their own
//! (3-5 bytes per active bucket instead of 15-20).
//!
//! A [`PartitionState`] buffers one batch of changes in memory and writes them with the
//! batch's next offset and clock in a single RocksDB `WriteBatch`, so state, timers and
//! offsets can never disagree after a crash. Between batches it keeps recently used profiles
//! and the earliest timers in memory (bounded), as copies of what RocksDB holds.
//!
//! The same changes can go to a changelog topic ([`PartitionState::changelog_records`]) and
//! come back through [`Store::restore`] on a worker that lacks the partition's disk.

mod changelog;
mod error;
mod keys;
mod partition;
mod profile_cache;
mod restore;
mod store;

pub use changelog::{
    decode_entry, ChangelogEntry, ChangelogMeta, ChangelogRecord, CHANGELOG_VERSION,
};
pub use error::StateError;
pub use partition::{DueTimer, PartitionState};
pub use restore::{Restore, RestoreSummary};
pub use store::{PartitionMeta, Store, StoreOptions, StoreStats, TimerEntry};
