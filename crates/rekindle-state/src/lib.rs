//! Durable per-partition state in RocksDB. No other crate depends on `rocksdb`.
//!
//! One database per worker, three column families, every key prefixed by the partition:
//!
//! | family     | key                                   | value                         |
//! |------------|---------------------------------------|-------------------------------|
//! | `profiles` | partition, user id                    | the user's profile (`rekindle_rules::encode_profile`) |
//! | `timers`   | partition, due time (ordered), user id| the planned count steps (`rekindle_rules::Wake`) |
//! | `meta`     | partition                             | next offset, clock, counts, changelog position |
//!
//! Profile values have a layout of their own (times as differences from related times in
//! the same profile, 3-5 bytes per active bucket); the store keeps a profile without its
//! applied offset when the same write moves the partition's position past it. Everything
//! else in `meta` is postcard.
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
mod warm;

pub use changelog::{
    decode_entry, ChangelogEntry, ChangelogMeta, ChangelogRecord, CHANGELOG_VERSION,
};
pub use error::StateError;
pub use partition::{DueTimer, PartitionState};
pub use restore::{Restore, RestoreSummary};
pub use store::{PartitionMeta, Store, StoreOptions, StoreStats, TimerEntry};
