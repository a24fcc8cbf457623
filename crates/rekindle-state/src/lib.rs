//! Durable per-partition state in RocksDB. No other crate depends on `rocksdb`.
//!
//! One database per worker, three column families, every key prefixed by the partition:
//!
//! | family     | key                                   | value                         |
//! |------------|---------------------------------------|-------------------------------|
//! | `profiles` | partition, user id                    | the user's profile (postcard) |
//! | `timers`   | partition, due time (ordered), user id| empty                         |
//! | `meta`     | partition                             | next offset and clock         |
//!
//! A [`PartitionState`] buffers one batch of changes in memory and writes them with the
//! batch's next offset and clock in a single RocksDB `WriteBatch`, so state, timers and
//! offsets can never disagree after a crash.

mod error;
mod keys;
mod partition;
mod store;

pub use error::StateError;
pub use partition::{DueTimer, PartitionState};
pub use store::{PartitionMeta, Store, StoreOptions, StoreStats};
