//! Reading a changelog partition back, for restores.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::{KafkaError, KafkaSettings};

/// A consumer outside any group that reads one changelog partition at a time, from a
/// given offset to the end of the log.
pub struct ChangelogReader {
    consumer: BaseConsumer,
    topic: String,
    /// The read fails when no record and no end of log arrives for this long.
    stall_timeout: Duration,
}

/// How a read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangelogRead {
    pub records: u64,
    /// The offset after the last record read: where the next read starts.
    pub next_offset: i64,
}

impl ChangelogReader {
    pub fn new(
        settings: &KafkaSettings,
        topic: &str,
        stall_timeout: Duration,
    ) -> Result<ChangelogReader, KafkaError> {
        let mut config = settings.consumer_config("rekindle-changelog-restore");
        // Assign only: never joins the group it names, never commits.
        config.remove("group.instance.id");
        // Polled only during restores: statistics would pile up in its queue in between.
        config.remove("statistics.interval.ms");
        config.set("enable.partition.eof", "true");
        // Records of aborted transactions are not state.
        config.set("isolation.level", "read_committed");
        config.set("fetch.wait.max.ms", "50");
        Ok(ChangelogReader {
            consumer: config.create()?,
            topic: topic.to_string(),
            stall_timeout,
        })
    }

    /// The changelog partition's end (high watermark, or last stable offset) now.
    pub fn end_offset(&self, partition: u32) -> Result<i64, KafkaError> {
        let (_, high) =
            self.consumer
                .fetch_watermarks(&self.topic, partition as i32, self.stall_timeout)?;
        Ok(high)
    }

    /// Feeds `apply` every record of `partition` from `from` (`None`: the beginning) up to
    /// the end of the log, as the fetches that reach it report it. Blocking.
    ///
    /// The end is where the consumer reports the end of the partition, not the end offset
    /// asked for at the start: a broker may answer that query with an offset inside the last
    /// written batch, and a restore that stopped there would miss the rest of the batch
    /// (its position record last of all) while the group's offsets had moved past it.
    pub fn read<E>(
        &self,
        partition: u32,
        from: Option<i64>,
        mut apply: impl FnMut(&[u8], Option<&[u8]>) -> Result<(), E>,
    ) -> Result<Result<ChangelogRead, E>, KafkaError> {
        let (low, high) =
            self.consumer
                .fetch_watermarks(&self.topic, partition as i32, self.stall_timeout)?;
        let start = from.unwrap_or(low).max(low);
        let mut read = ChangelogRead {
            records: 0,
            next_offset: start.max(high),
        };
        if start >= high {
            return Ok(Ok(read));
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition as i32, Offset::Offset(start))?;
        self.consumer.assign(&tpl)?;
        let mut last_progress = Instant::now();
        let outcome = loop {
            if last_progress.elapsed() > self.stall_timeout {
                break Err(KafkaError::Topic {
                    topic: self.topic.clone(),
                    reason: format!(
                        "changelog partition {partition}: no progress for {:?} while restoring",
                        self.stall_timeout
                    ),
                });
            }
            match self.consumer.poll(Duration::from_millis(100)) {
                None => continue,
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) if p == partition as i32 => {
                    break Ok(())
                }
                // The end of a partition read before, reported late.
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => continue,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, partition, "changelog read error; librdkafka retries");
                    continue;
                }
                Some(Ok(message)) => {
                    last_progress = Instant::now();
                    let key = message.key().unwrap_or_default();
                    if let Err(e) = apply(key, message.payload()) {
                        let _ = self.consumer.unassign();
                        return Ok(Err(e));
                    }
                    read.records += 1;
                    read.next_offset = read.next_offset.max(message.offset() + 1);
                }
            }
        };
        self.consumer.unassign()?;
        outcome.map(|()| Ok(read))
    }
}
