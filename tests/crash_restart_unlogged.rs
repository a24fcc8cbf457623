//! The crash test without RocksDB's write-ahead log: every SIGKILL takes what the memtables
//! held, so every restart restores the partitions from the changelog before processing.

use rekindle_suite::support;

#[test]
fn killed_and_restarted_worker_without_rocksdbs_log_loses_no_trigger() {
    support::crash::killed_and_restarted("rekindle-crash-unlogged", "write_ahead_log = false");
}
