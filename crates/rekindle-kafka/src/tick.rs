use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use crate::sink::Producer;
use tokio::sync::watch;
use tracing::warn;

/// Header that marks a clock-tick record. Its value is the tick time as 8 big-endian bytes.
/// Other consumers of the activity topic should skip records carrying it.
pub const TICK_HEADER: &str = "rekindle-clock-tick";

/// The time a tick record carries, or `None` when its payload is not 8 bytes.
pub fn tick_time(payload: &[u8]) -> Option<i64> {
    <[u8; 8]>::try_from(payload).ok().map(i64::from_be_bytes)
}

/// Appends a tick record to every partition this worker owns, once per interval.
///
/// The tick carries this worker's wall-clock time. Appended to the partition, it is ordered
/// after every record written before it, so a backlog is always processed before the clock
/// jumps to "now", and a replay of the log sees the very same ticks.
pub struct ClockTicker {
    producer: Producer,
    topic: String,
    owned: Arc<Mutex<BTreeSet<u32>>>,
}

impl ClockTicker {
    pub fn new(producer: Producer, topic: &str, owned: Arc<Mutex<BTreeSet<u32>>>) -> ClockTicker {
        ClockTicker {
            producer,
            topic: topic.to_string(),
            owned,
        }
    }

    /// Runs until `shutdown` turns true; calls `on_sent` for each tick enqueued.
    pub async fn run(
        self,
        interval: Duration,
        mut shutdown: watch::Receiver<bool>,
        on_sent: impl Fn(),
    ) {
        let mut timer = tokio::time::interval(interval);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = timer.tick() => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
            let partitions: Vec<u32> = match self.owned.lock() {
                Ok(owned) => owned.iter().copied().collect(),
                Err(_) => return,
            };
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let payload = now_ms.to_be_bytes();
            for partition in partitions {
                let headers = OwnedHeaders::new().insert(Header {
                    key: TICK_HEADER,
                    value: Some("1"),
                });
                let record: FutureRecord<'_, (), [u8]> = FutureRecord::to(&self.topic)
                    .partition(partition as i32)
                    .payload(&payload[..])
                    .headers(headers);
                // Delivery is not awaited: a lost tick is replaced by the next one.
                match self.producer.send_result(record) {
                    Ok(_) => on_sent(),
                    Err((e, _)) => warn!(partition, error = %e, "clock tick not enqueued"),
                }
            }
        }
    }
}
