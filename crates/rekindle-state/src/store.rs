use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rekindle_rules::{GrowthFigures, UserProfile, MAX_SEGMENTS};
use rocksdb::statistics::Ticker;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, Direction,
    FlushOptions, IteratorMode, LruCacheOptions, Options, ReadOptions, WriteBatch, WriteOptions,
    DB,
};
use serde::{Deserialize, Serialize};

use crate::error::{decode, decode_profile};
use crate::keys::{growth_key, parse_timer_key, partition_prefix, profile_key, timer_seek};
use crate::StateError;

pub(crate) const CF_PROFILES: &str = "profiles";
pub(crate) const CF_TIMERS: &str = "timers";
pub(crate) const CF_META: &str = "meta";
/// Every column family: what opening, flushing and compacting all of the store names.
const FAMILIES: [&str; 3] = [CF_PROFILES, CF_TIMERS, CF_META];
/// Bumped whenever a key or value layout changes incompatibly.
const FORMAT_VERSION: u32 = 7;
const FORMAT_KEY: &[u8] = b"format_version";
/// See [`block_cache`].
const MIN_CACHE_SHARD_BYTES: usize = 64 << 20;
/// RocksDB's defaults for these two settings (unused by LZ4, which has a fixed window).
const LZ4_WINDOW_BITS: i32 = -14;
const DEFAULT_COMPRESSION_LEVEL: i32 = 32_767;
const PROFILE_DICTIONARY_BYTES: i32 = 16 << 10;
const PROFILE_FILE_BYTES: u64 = 16 << 20;
/// A profile memtable's bloom filter, as a share of the memtable's size.
const MEMTABLE_BLOOM_RATIO: f64 = 0.02;
/// Timer files are only scanned in order, so large blocks cost no extra reads and compress
/// better.
const TIMER_BLOCK_BYTES: usize = 64 << 10;

/// Tuning that reaches RocksDB.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Shared LRU block cache for all column families.
    pub block_cache_bytes: usize,
    /// Decoded profiles kept in memory between batches, for all open partitions together
    /// (each partition keeps its share). Bounds the worker's memory, not the user count.
    pub profile_cache_users: usize,
    /// Profiles kept in their stored form between batches, in bytes, for all open
    /// partitions together: about a tenth of a decoded profile's memory each, read back
    /// with a decode instead of a RocksDB lookup.
    pub profile_cache_bytes: usize,
    /// Memtable memory for all column families together: RocksDB flushes the largest
    /// memtable when the total reaches it. Most of a worker's memory besides the caches.
    pub write_buffer_bytes: usize,
    /// Log every write to RocksDB's write-ahead log before the memtables. Turn it off only
    /// when every commit also reaches a changelog that is read back before a partition is
    /// processed: a crash then loses what the memtables held since their last flush, the
    /// store reopens at that earlier commit (all column families flush together, so it is
    /// one consistent commit), and the partition's restore applies the changelog from there.
    pub write_ahead_log: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            block_cache_bytes: 64 * 1024 * 1024,
            profile_cache_users: 100_000,
            profile_cache_bytes: 128 * 1024 * 1024,
            write_buffer_bytes: 64 * 1024 * 1024,
            write_ahead_log: true,
        }
    }
}

/// Where a partition's processing stands, as durable as the state it describes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMeta {
    /// Offset of the next record to process: every record below it is reflected in state.
    pub next_offset: i64,
    /// The partition's pipeline clock: the largest event or tick time processed.
    pub clock_ms: i64,
    /// Users per lifecycle stage (indexed by `LifecycleStage::index`), kept exact by
    /// applying every stage change in the same batch as the profile that changed.
    pub stage_users: [i64; 5],
    /// Entries in the partition's timer index, kept with every change to it.
    pub pending_timers: i64,
    /// The changelog partition's offset after the last record this state reflects: reading
    /// the changelog from here finds only changes this store has not seen.
    pub changelog_next: Option<i64>,
    /// Users per RFM segment (by index into the configured names), kept exact like
    /// `stage_users`.
    pub segment_users: [i64; MAX_SEGMENTS],
    /// The lifecycle and segment configuration the stored stages, segments, counts and timer
    /// entries were planned under (0: unknown, e.g. after a restore); a worker with another
    /// configuration recomputes them at open.
    pub plan_hash: u64,
}

/// A timer index entry: (due time, user) and its value (see `rekindle_rules::Wake`).
pub type TimerEntry = ((i64, String), Vec<u8>);

/// Size figures for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Live data in SST files plus memtables.
    pub live_data_bytes: u64,
    pub profiles_estimate: u64,
    pub compaction_pending_bytes: u64,
    /// Cumulative since the store was opened.
    pub block_cache_hits: u64,
    pub block_cache_misses: u64,
    pub write_stall_micros: u64,
}

/// A worker's RocksDB database. Cheap to clone: clones share the handle.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
    /// Kept for its statistics (block cache, stalls), which RocksDB reports through the
    /// options the database was opened with.
    options: Option<Arc<Options>>,
    profile_cache_users: usize,
    profile_cache_bytes: usize,
    /// Partition states open on this store, which share `profile_cache_users` and
    /// `profile_cache_bytes`.
    open_partitions: Arc<AtomicUsize>,
    /// See [`StoreOptions::write_ahead_log`].
    write_ahead_log: bool,
}

/// Table options for the profiles: point lookups, most of which find their key.
fn point_lookup_table(cache: &Cache) -> BlockBasedOptions {
    let mut table = scan_table(cache);
    table.set_bloom_filter(10.0, false);
    table
}

/// The block cache, in shards of at least 64 MiB (one at the default size).
///
/// A file's bloom filter and index are single blocks that grow with the keys in the file,
/// past a megabyte for a 64 MiB file of profiles. RocksDB's default shard count gives a
/// 64 MiB cache 64 shards of 1 MiB, and a block larger than its shard is dropped as soon as
/// it is used: every lookup reaching that file read the whole filter back from the file
/// and checksummed it. The engine is one thread, so fewer shards cost no contention.
fn block_cache(capacity: usize) -> Cache {
    let shards = (capacity / MIN_CACHE_SHARD_BYTES).max(1);
    let mut options = LruCacheOptions::default();
    options.set_capacity(capacity);
    options.set_num_shard_bits(shards.ilog2().min(6) as i32);
    Cache::new_lru_cache_opts(&options)
}

/// Table options for families without point lookups on the hot path.
fn scan_table(cache: &Cache) -> BlockBasedOptions {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    // Index and filter blocks grow with the data: charged to the block cache, memory stays
    // what the configuration says however many users there are.
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    table
}

/// `dictionary_bytes`: the last level's dictionary per file (0: none).
fn family_options(
    options: &StoreOptions,
    table: &BlockBasedOptions,
    dictionary_bytes: i32,
) -> Options {
    let mut family = Options::default();
    family.set_block_based_table_factory(table);
    family.set_compression_type(DBCompressionType::Lz4);
    // The last level holds nearly all the data and is rewritten least often: LZ4's high
    // compression mode there, which reads back as fast as LZ4 (the same format) and takes
    // a quarter less space, for more of the background thread's time when it writes.
    family.set_bottommost_compression_type(DBCompressionType::Lz4hc);
    family.set_bottommost_compression_options(
        LZ4_WINDOW_BITS,
        DEFAULT_COMPRESSION_LEVEL,
        0,
        dictionary_bytes,
        true,
    );
    // Each family may use up to half the budget; the shared limit below holds the sum.
    family.set_write_buffer_size((options.write_buffer_bytes / 2).max(1 << 20));
    family
}

/// The profiles' options: as [`family_options`], and in the last level a dictionary per
/// file, sampled from its data, that each block is compressed against. Profiles are small
/// values with the same field layout and user id prefixes; a 4 KiB block alone repeats
/// too little of it for LZ4 to find. With the dictionary the last level takes about a
/// seventh less again, and point lookups still decompress one 4 KiB block.
fn profile_options(options: &StoreOptions, table: &BlockBasedOptions) -> Options {
    let mut family = family_options(options, table, PROFILE_DICTIONARY_BYTES);
    // A file's data is held in memory until its dictionary is sampled: smaller files bound
    // that memory (RocksDB's default is 64 MiB).
    family.set_target_file_size_base(PROFILE_FILE_BYTES);
    // A bloom filter over each memtable's keys: most profile reads that reach RocksDB are
    // of users it has never seen, and without the filter each one searches every memtable's
    // skip list (a cache miss per level) before the files' filters turn it away.
    family.set_memtable_whole_key_filtering(true);
    family.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO);
    family
}

/// The only format this build reads.
fn expect_format(found: u32) -> Result<(), StateError> {
    if found == FORMAT_VERSION {
        Ok(())
    } else {
        Err(StateError::FormatVersion {
            found,
            expected: FORMAT_VERSION,
        })
    }
}

impl Store {
    pub fn open(path: &Path, options: &StoreOptions) -> Result<Store, StateError> {
        let cache = block_cache(options.block_cache_bytes);
        let profiles = ColumnFamilyDescriptor::new(
            CF_PROFILES,
            profile_options(options, &point_lookup_table(&cache)),
        );
        // The timer index is only ever scanned in due order: a bloom filter would be built
        // for every file and never consulted.
        let mut timer_table = scan_table(&cache);
        timer_table.set_block_size(TIMER_BLOCK_BYTES);
        let timers =
            ColumnFamilyDescriptor::new(CF_TIMERS, family_options(options, &timer_table, 0));
        // A few keys per partition, read when a partition opens: a filter would save nothing.
        let meta =
            ColumnFamilyDescriptor::new(CF_META, family_options(options, &scan_table(&cache), 0));
        let cfs = [profiles, timers, meta];
        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        db_options.enable_statistics();
        db_options.set_db_write_buffer_size(options.write_buffer_bytes);
        if !options.write_ahead_log {
            // Without the log, what survives a crash is what the last flush wrote: with
            // every family flushed at the same moment it is one commit, not a profile
            // family from one commit beside the positions of another.
            db_options.set_atomic_flush(true);
        }
        let db = DB::open_cf_descriptors(&db_options, path, cfs)?;
        let store = Store {
            db: Arc::new(db),
            options: Some(Arc::new(db_options)),
            profile_cache_users: options.profile_cache_users,
            profile_cache_bytes: options.profile_cache_bytes,
            open_partitions: Arc::default(),
            write_ahead_log: options.write_ahead_log,
        };
        store.check_format()?;
        Ok(store)
    }

    /// Opens a database another process may be writing, for inspection: reads see the
    /// state as of opening.
    pub fn open_read_only(path: &Path) -> Result<Store, StateError> {
        let db = DB::open_cf_for_read_only(&Options::default(), path, FAMILIES, false)?;
        let store = Store {
            db: Arc::new(db),
            options: None,
            profile_cache_users: 0,
            profile_cache_bytes: 0,
            open_partitions: Arc::default(),
            write_ahead_log: true,
        };
        // A store without a format key is not one this build wrote: format 0.
        expect_format(store.stored_format()?.unwrap_or(0))?;
        Ok(store)
    }

    /// Partitions this store holds state for.
    pub fn partitions(&self) -> Result<Vec<u32>, StateError> {
        let mut found = Vec::new();
        for entry in self.db.iterator_cf(self.cf(CF_META)?, IteratorMode::Start) {
            let (key, _) = entry?;
            if let Ok(bytes) = <[u8; 4]>::try_from(key.as_ref()) {
                found.push(u32::from_be_bytes(bytes));
            }
        }
        Ok(found)
    }

    /// The format the store says it is in (0 for an unreadable key), `None` when it names
    /// none.
    fn stored_format(&self) -> Result<Option<u32>, StateError> {
        let bytes = self.db.get_pinned_cf(self.cf(CF_META)?, FORMAT_KEY)?;
        Ok(bytes.map(|b| {
            <[u8; 4]>::try_from(b.as_ref())
                .map(u32::from_be_bytes)
                .unwrap_or(0)
        }))
    }

    /// Checks a store this build writes: one without a format is new and gets this one.
    fn check_format(&self) -> Result<(), StateError> {
        match self.stored_format()? {
            Some(found) => expect_format(found)?,
            None => {
                let mut batch = WriteBatch::default();
                batch.put_cf(self.cf(CF_META)?, FORMAT_KEY, FORMAT_VERSION.to_be_bytes());
                self.write(batch)?;
                if !self.write_ahead_log {
                    // On disk at once, so that a read-only opening names the format even
                    // before the first memtable flush.
                    self.persist()?;
                }
            }
        }
        Ok(())
    }

    /// One partition's share of a budget for all open partitions, given how many are open.
    fn partition_share(&self, total: usize) -> usize {
        total / self.open_partitions.load(Ordering::Relaxed).max(1)
    }

    /// How many profiles one partition may keep cached, given how many are open now.
    pub(crate) fn profile_cache_share(&self) -> usize {
        self.partition_share(self.profile_cache_users)
    }

    /// How many bytes of stored profiles one partition may keep, given how many are open.
    pub(crate) fn profile_bytes_share(&self) -> usize {
        self.partition_share(self.profile_cache_bytes)
    }

    /// Counts an open partition state until the returned guard is dropped.
    pub(crate) fn partition_opened(&self) -> OpenPartition {
        self.open_partitions.fetch_add(1, Ordering::Relaxed);
        OpenPartition(self.open_partitions.clone())
    }

    #[cfg(test)]
    pub(crate) fn db(&self) -> &DB {
        &self.db
    }

    /// Writes the memtables to files, every family at the same moment. A store without the
    /// write-ahead log does this before a clean stop, so that the restart finds the last
    /// commit on disk instead of restoring it from the changelog.
    pub fn persist(&self) -> Result<(), StateError> {
        let families = FAMILIES
            .iter()
            .map(|name| self.cf(name))
            .collect::<Result<Vec<_>, _>>()?;
        self.db.flush_cfs_opt(&families, &FlushOptions::default())?;
        Ok(())
    }

    /// Every write goes through here, so that all of them use the log or none does: a
    /// logged write after unlogged ones would come back after a crash without them.
    pub(crate) fn write(&self, batch: WriteBatch) -> Result<(), StateError> {
        let mut options = WriteOptions::default();
        options.disable_wal(!self.write_ahead_log);
        self.db.write_opt(batch, &options)?;
        Ok(())
    }

    pub(crate) fn cf(&self, name: &'static str) -> Result<&ColumnFamily, StateError> {
        self.db
            .cf_handle(name)
            .ok_or(StateError::MissingColumnFamily(name))
    }

    /// The partition's growth figures (empty before its first counted activity).
    pub fn growth(&self, partition: u32) -> Result<GrowthFigures, StateError> {
        let bytes = self
            .db
            .get_pinned_cf(self.cf(CF_META)?, growth_key(partition))?;
        let figures = bytes
            .map(|b| decode("growth figures", partition, &b))
            .transpose()?;
        Ok(figures.unwrap_or_default())
    }

    pub fn meta(&self, partition: u32) -> Result<Option<PartitionMeta>, StateError> {
        let bytes = self
            .db
            .get_pinned_cf(self.cf(CF_META)?, partition_prefix(partition))?;
        bytes
            .map(|b| decode("partition meta", partition, &b))
            .transpose()
    }

    pub fn profile(
        &self,
        partition: u32,
        user_id: &str,
    ) -> Result<Option<UserProfile>, StateError> {
        let bytes = self
            .db
            .get_pinned_cf(self.cf(CF_PROFILES)?, profile_key(partition, user_id))?;
        bytes
            .map(|b| decode_profile("profile", partition, &b))
            .transpose()
    }

    /// Every profile of `partition`, by user id: a full scan, for tools and tests.
    pub fn profiles(&self, partition: u32) -> Result<Vec<(String, UserProfile)>, StateError> {
        self.profile_entries(partition)?.collect()
    }

    /// Up to `limit` user ids of `partition` with a stored profile, in order, after `after`.
    pub fn user_ids(
        &self,
        partition: u32,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StateError> {
        let mut read = ReadOptions::default();
        read.set_iterate_upper_bound(partition_prefix(partition.saturating_add(1)).to_vec());
        let from = match after {
            // The first key after `after`: the same bytes with a zero byte appended.
            Some(user) => {
                let mut key = profile_key(partition, user);
                key.push(0);
                key
            }
            None => partition_prefix(partition).to_vec(),
        };
        let iter = self.db.iterator_cf_opt(
            self.cf(CF_PROFILES)?,
            read,
            IteratorMode::From(&from, Direction::Forward),
        );
        let mut users = Vec::new();
        for entry in iter.take(limit) {
            let (key, _) = entry?;
            let user = std::str::from_utf8(key.get(4..).unwrap_or_default()).map_err(|e| {
                StateError::Corrupt {
                    what: "profile key",
                    partition,
                    reason: e.to_string(),
                }
            })?;
            users.push(user.to_string());
        }
        Ok(users)
    }

    /// Streams every profile of `partition` in user id order, decoded.
    pub(crate) fn profile_entries(
        &self,
        partition: u32,
    ) -> Result<impl Iterator<Item = Result<(String, UserProfile), StateError>> + '_, StateError>
    {
        let mut read = ReadOptions::default();
        read.set_iterate_upper_bound(partition_prefix(partition.saturating_add(1)).to_vec());
        let from = partition_prefix(partition);
        let iter = self.db.iterator_cf_opt(
            self.cf(CF_PROFILES)?,
            read,
            IteratorMode::From(&from, Direction::Forward),
        );
        Ok(iter.map(move |entry| {
            let (key, value) = entry?;
            let corrupt = |reason: String| StateError::Corrupt {
                what: "profile",
                partition,
                reason,
            };
            let user = std::str::from_utf8(key.get(4..).unwrap_or_default())
                .map_err(|e| corrupt(e.to_string()))?;
            let profile = decode_profile("profile", partition, &value)?;
            Ok((user.to_string(), profile))
        }))
    }

    /// Deletes every timer entry of `partition`.
    pub fn clear_timers(&self, partition: u32) -> Result<(), StateError> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            self.cf(CF_TIMERS)?,
            partition_prefix(partition),
            partition_prefix(partition.saturating_add(1)),
        );
        self.write(batch)?;
        Ok(())
    }

    /// Timers of `partition` with `from_ms <= due <= to_ms`, in due order.
    pub fn timers_between(
        &self,
        partition: u32,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(i64, String)>, StateError> {
        Ok(self
            .timer_entries_between(partition, from_ms, to_ms)?
            .into_iter()
            .map(|(key, _)| key)
            .collect())
    }

    /// [`Store::timers_between`] with each entry's value.
    pub fn timer_entries_between(
        &self,
        partition: u32,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<TimerEntry>, StateError> {
        let mut found = Vec::new();
        for entry in self.timer_iter(partition, from_ms)? {
            let (key, value) = entry?;
            match parse_timer_key(&key) {
                Some((p, due, user)) if p == partition && due <= to_ms => {
                    found.push(((due, user), value.to_vec()))
                }
                _ => break,
            }
        }
        Ok(found)
    }

    /// At least `limit` timers of `partition` due at or after `from_ms` (fewer when the index
    /// has no more), in due order, never splitting one due time between two reads. The flag
    /// is true when the index has nothing beyond what was returned.
    pub fn timers_from(
        &self,
        partition: u32,
        from_ms: i64,
        limit: usize,
    ) -> Result<(Vec<TimerEntry>, bool), StateError> {
        let mut found: Vec<TimerEntry> = Vec::with_capacity(limit);
        for entry in self.timer_iter(partition, from_ms)? {
            let (key, value) = entry?;
            match parse_timer_key(&key) {
                Some((p, due, user)) if p == partition => {
                    if found.len() >= limit && found.last().is_some_and(|((d, _), _)| *d != due) {
                        return Ok((found, false));
                    }
                    found.push(((due, user), value.to_vec()));
                }
                _ => break,
            }
        }
        Ok((found, true))
    }

    fn timer_iter(
        &self,
        partition: u32,
        from_ms: i64,
    ) -> Result<rocksdb::DBIteratorWithThreadMode<'_, DB>, StateError> {
        let mut read = ReadOptions::default();
        read.set_iterate_upper_bound(partition_prefix(partition.wrapping_add(1)).to_vec());
        if partition == u32::MAX {
            read = ReadOptions::default();
        }
        let seek = timer_seek(partition, from_ms);
        Ok(self.db.iterator_cf_opt(
            self.cf(CF_TIMERS)?,
            read,
            IteratorMode::From(&seek, Direction::Forward),
        ))
    }

    /// An integer property of one column family (0 when RocksDB has none).
    fn property(&self, family: &'static str, property: &str) -> Result<u64, StateError> {
        Ok(self
            .db
            .property_int_value_cf(self.cf(family)?, property)?
            .unwrap_or(0))
    }

    /// An integer property summed over all column families.
    fn summed_property(&self, property: &str) -> Result<u64, StateError> {
        let mut total = 0;
        for family in FAMILIES {
            total += self.property(family, property)?;
        }
        Ok(total)
    }

    /// Compacts every column family fully: what the state costs on disk once RocksDB has
    /// caught up (for benchmarks and tools; a worker leaves this to background compaction).
    pub fn compact(&self) -> Result<(), StateError> {
        for name in FAMILIES {
            self.db.flush_cf(self.cf(name)?)?;
            self.db
                .compact_range_cf(self.cf(name)?, None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }

    /// Bytes in SST files, all column families (memtables not included).
    pub fn sst_bytes(&self) -> Result<u64, StateError> {
        self.summed_property("rocksdb.total-sst-files-size")
    }

    /// RocksDB's memory by use, in bytes: (memtables, table readers outside the block
    /// cache, block cache), all column families.
    pub fn memory_bytes(&self) -> Result<(u64, u64, u64), StateError> {
        Ok((
            self.summed_property("rocksdb.cur-size-all-mem-tables")?,
            self.summed_property("rocksdb.estimate-table-readers-mem")?,
            // One cache shared by every family: read it once.
            self.property(CF_PROFILES, "rocksdb.block-cache-usage")?,
        ))
    }

    /// RocksDB's own estimates, cheap to read (no scan).
    pub fn stats(&self) -> Result<StoreStats, StateError> {
        let mut stats = StoreStats::default();
        for name in FAMILIES {
            let int = |property: &str| self.property(name, property);
            stats.live_data_bytes += int("rocksdb.estimate-live-data-size")?;
            stats.live_data_bytes += int("rocksdb.cur-size-all-mem-tables")?;
            stats.compaction_pending_bytes += int("rocksdb.estimate-pending-compaction-bytes")?;
            if name == CF_PROFILES {
                stats.profiles_estimate = int("rocksdb.estimate-num-keys")?;
            }
        }
        if let Some(options) = &self.options {
            stats.block_cache_hits = options.get_ticker_count(Ticker::BlockCacheHit);
            stats.block_cache_misses = options.get_ticker_count(Ticker::BlockCacheMiss);
            stats.write_stall_micros = options.get_ticker_count(Ticker::StallMicros);
        }
        Ok(stats)
    }

    /// Number of pending timers of `partition`; a full scan of its timers, for tests and tools.
    pub fn count_timers(&self, partition: u32) -> Result<usize, StateError> {
        Ok(self.timers_between(partition, i64::MIN, i64::MAX)?.len())
    }
}

/// Keeps a partition counted as open (see [`Store::profile_cache_share`]) while it lives.
pub(crate) struct OpenPartition(Arc<AtomicUsize>);

impl Drop for OpenPartition {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
