use std::collections::BTreeSet;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use tokio::time::{timeout, Instant};
use tracing::{error, info, warn};

use crate::tick::{tick_time, TICK_HEADER};
use crate::{KafkaError, KafkaSettings};

/// Seeks back after an aborted transaction: attempts, and the pause before the second (it
/// grows with each).
const SEEK_ATTEMPTS: u32 = 5;
const SEEK_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// A change in the partitions this worker owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    Assigned(Vec<u32>),
    Revoked(Vec<u32>),
    /// The partition's state could not be prepared (its restore failed): the worker must
    /// not process it.
    Failed {
        partition: u32,
        reason: String,
    },
}

/// Where a newly assigned partition resumes: the next offset its stored state has not seen
/// (`None`: no state, start from the group's offset). Called when the partition is assigned,
/// before anything of it is fetched: the place to restore missing state. Blocking is allowed.
pub type ResumeLookup = Arc<dyn Fn(u32) -> Result<Option<i64>, String> + Send + Sync>;

/// What the consumer tells the rest of the worker (metrics, readiness). Called from
/// librdkafka's callbacks: implementations must be quick and must not block.
pub trait SourceObserver: Send + Sync {
    fn assigned(&self, _partitions: &[u32]) {}
    fn revoked(&self, _partitions: &[u32]) {}
    /// librdkafka reports that no broker can be reached.
    fn all_brokers_down(&self) {}
    /// From librdkafka's statistics: how many broker connections are up.
    fn brokers_up(&self, _up: usize) {}
    /// From librdkafka's statistics: records between the high watermark and the committed
    /// position of an owned partition.
    fn lag(&self, _partition: u32, _records: i64) {}
}

/// An observer that ignores everything (tools that need no metrics).
pub struct NoObserver;

impl SourceObserver for NoObserver {}

struct SourceContext {
    topic: String,
    resume: ResumeLookup,
    owned: Arc<Mutex<BTreeSet<u32>>>,
    changes: Mutex<mpsc::Sender<Assignment>>,
    observer: Arc<dyn SourceObserver>,
}

impl ClientContext for SourceContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown) {
            self.observer.all_brokers_down();
        }
        error!(error = %error, reason, "librdkafka error");
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        self.observer.brokers_up(brokers_up(&statistics));
        if let Some(topic) = statistics.topics.get(&self.topic) {
            for (partition, p) in &topic.partitions {
                if let Ok(partition) = u32::try_from(*partition) {
                    if p.consumer_lag >= 0 {
                        self.observer.lag(partition, p.consumer_lag);
                    }
                }
            }
        }
    }
}

/// Broker connections librdkafka reports as up (bootstrap entries included).
pub(crate) fn brokers_up(statistics: &rdkafka::Statistics) -> usize {
    statistics
        .brokers
        .values()
        .filter(|b| b.state == "UP")
        .count()
}

impl SourceContext {
    fn notify(&self, change: Assignment) {
        if let Ok(sender) = self.changes.lock() {
            // The receiver lives as long as the Source; a send can only fail during drop.
            let _ = sender.send(change);
        }
    }

    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<u32> {
        tpl.elements_for_topic(&self.topic)
            .iter()
            .filter_map(|e| u32::try_from(e.partition()).ok())
            .collect()
    }
}

impl ConsumerContext for SourceContext {
    // Replaces the default so that assigned partitions start where the state store says,
    // not where the group's committed offsets say: state is the source of truth.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            rdkafka::consumer::RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let partitions = self.partitions(tpl);
                let mut resume_at = Vec::with_capacity(partitions.len());
                for p in &partitions {
                    let next = match (self.resume)(*p) {
                        Ok(next) => next,
                        Err(reason) => {
                            error!(partition = p, %reason, "cannot prepare the partition's state");
                            self.notify(Assignment::Failed {
                                partition: *p,
                                reason,
                            });
                            None
                        }
                    };
                    resume_at.push((*p, next));
                    if let Some(next) = next {
                        if let Err(e) =
                            tpl.set_partition_offset(&self.topic, *p as i32, Offset::Offset(next))
                        {
                            error!(partition = p, error = %e, "cannot set resume offset");
                        }
                    }
                }
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = result {
                    error!(error = %e, "partition assignment failed");
                }
                if let Ok(mut owned) = self.owned.lock() {
                    owned.extend(partitions.iter().copied());
                }
                info!(
                    ?partitions,
                    ?resume_at,
                    "partitions assigned (offsets from state; None: group offset)"
                );
                self.observer.assigned(&partitions);
                self.notify(Assignment::Assigned(partitions));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let partitions = self.partitions(tpl);
                if let Ok(mut owned) = self.owned.lock() {
                    for p in &partitions {
                        owned.remove(p);
                    }
                }
                info!(?partitions, "partitions revoked");
                self.observer.revoked(&partitions);
                self.notify(Assignment::Revoked(partitions));
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = result {
                    error!(error = %e, "partition revocation failed");
                }
            }
            other => error!(error = ?other, "rebalance error"),
        }
    }
}

/// One record of the activity topic, without rdkafka types.
#[derive(Debug, Clone, Copy)]
pub struct SourceRecord<'a> {
    pub partition: u32,
    pub offset: i64,
    /// The Kafka record timestamp (create or log-append time).
    pub timestamp_ms: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    /// The time a clock-tick record carries; `None` for any other record.
    pub tick_ms: Option<i64>,
}

/// The activity topic, read in a consumer group.
pub struct Source {
    consumer: StreamConsumer<SourceContext>,
    changes: mpsc::Receiver<Assignment>,
    topic: String,
}

impl Source {
    /// `owned` is kept equal to the set of partitions this worker owns, for the ticker.
    pub fn new(
        settings: &KafkaSettings,
        group_id: &str,
        topic: &str,
        resume: ResumeLookup,
        owned: Arc<Mutex<BTreeSet<u32>>>,
        observer: Arc<dyn SourceObserver>,
    ) -> Result<Source, KafkaError> {
        let (sender, changes) = mpsc::channel();
        let context = SourceContext {
            topic: topic.to_string(),
            resume,
            owned,
            changes: Mutex::new(sender),
            observer,
        };
        let consumer: StreamConsumer<SourceContext> = settings
            .consumer_config(group_id)
            .create_with_context(context)?;
        consumer.subscribe(&[topic])?;
        Ok(Source {
            consumer,
            changes,
            topic: topic.to_string(),
        })
    }

    /// Waits up to `idle_wait` for a first record, then collects more until `max_records`
    /// or `max_wait` after the first. An empty batch means nothing arrived in `idle_wait`.
    pub async fn next_batch(
        &self,
        max_records: usize,
        max_wait: Duration,
        idle_wait: Duration,
    ) -> Result<Vec<BorrowedMessage<'_>>, KafkaError> {
        let mut batch = Vec::new();
        // One stream for the batch: each `recv` registers a waker slot and drops it again,
        // under a lock each time.
        let mut stream = self.consumer.stream();
        match timeout(idle_wait, stream.next()).await {
            Err(_) => return Ok(batch),
            Ok(first) => match first.map(survivable).transpose()?.flatten() {
                Some(message) => batch.push(message),
                None => return Ok(batch),
            },
        }
        let deadline = Instant::now() + max_wait;
        while batch.len() < max_records {
            // Records already fetched are taken without arming a timer for each; only an
            // empty queue waits, until the deadline.
            let next = match stream.next().now_or_never() {
                Some(next) => next,
                None => match tokio::time::timeout_at(deadline, stream.next()).await {
                    Err(_) => break,
                    Ok(next) => next,
                },
            };
            match next.map(survivable).transpose()?.flatten() {
                Some(message) => batch.push(message),
                None => break,
            }
        }
        Ok(batch)
    }

    /// Assignment changes since the last call, in order.
    pub fn assignment_changes(&self) -> Vec<Assignment> {
        self.changes.try_iter().collect()
    }

    /// Next offsets as a list for the transactional producer.
    pub(crate) fn offsets(
        &self,
        next_offsets: &[(u32, i64)],
    ) -> Result<TopicPartitionList, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for (partition, next) in next_offsets {
            tpl.add_partition_offset(&self.topic, *partition as i32, Offset::Offset(*next))?;
        }
        Ok(tpl)
    }

    pub(crate) fn group_metadata(&self) -> Option<rdkafka::consumer::ConsumerGroupMetadata> {
        self.consumer.group_metadata()
    }

    /// Moves owned partitions back to the given offsets, so that a batch whose transaction
    /// was aborted is read again. librdkafka reports a seek that did not take per partition
    /// (for one, a partition whose fetcher has not started yet answers "erroneous state"):
    /// those are tried again, and if one still fails the error ends the worker, which then
    /// resumes from its state. Reading on from where the partition was would skip the
    /// aborted batch, and its triggers with it.
    pub async fn rewind(&self, next_offsets: &[(u32, i64)]) -> Result<(), KafkaError> {
        let mut pending = next_offsets.to_vec();
        for attempt in 1..=SEEK_ATTEMPTS {
            if pending.is_empty() {
                return Ok(());
            }
            let answered = self
                .consumer
                .seek_partitions(self.offsets(&pending)?, Duration::from_secs(10))?;
            let mut failed = Vec::new();
            for element in answered.elements() {
                if let Err(e) = element.error() {
                    let partition = element.partition() as u32;
                    warn!(partition, attempt, error = %e, "seek back after an aborted transaction failed");
                    failed.extend(pending.iter().filter(|(p, _)| *p == partition).copied());
                }
            }
            pending = failed;
            if !pending.is_empty() && attempt < SEEK_ATTEMPTS {
                tokio::time::sleep(SEEK_RETRY_PAUSE * attempt).await;
            }
        }
        match pending.first() {
            None => Ok(()),
            Some((partition, offset)) => Err(KafkaError::Topic {
                topic: self.topic.clone(),
                reason: format!(
                    "partition {partition} could not be moved back to offset {offset} after an aborted transaction"
                ),
            }),
        }
    }

    /// Reports progress to the group. Asynchronous: state, not the group, is the truth.
    pub fn commit_progress(&self, next_offsets: &[(u32, i64)]) -> Result<(), KafkaError> {
        if next_offsets.is_empty() {
            return Ok(());
        }
        let tpl = self.offsets(next_offsets)?;
        self.consumer.commit(&tpl, CommitMode::Async)?;
        Ok(())
    }
}

/// librdkafka reports broker and transport trouble through the consumer and keeps retrying
/// by itself: such errors are logged and the batch ends early. Only fatal errors stop the
/// worker.
fn survivable<'a>(
    received: Result<BorrowedMessage<'a>, rdkafka::error::KafkaError>,
) -> Result<Option<BorrowedMessage<'a>>, KafkaError> {
    match received {
        Ok(message) => Ok(Some(message)),
        Err(e @ rdkafka::error::KafkaError::MessageConsumptionFatal(_)) => Err(e.into()),
        Err(e) => {
            warn!(error = %e, "consumer error; librdkafka retries");
            Ok(None)
        }
    }
}

/// Reads what the engine needs from a message.
pub fn source_record<'a>(message: &'a BorrowedMessage<'_>) -> SourceRecord<'a> {
    let payload = message.payload().unwrap_or(&[]);
    // A tick is an 8-byte time with the tick header. The payload is looked at first: asking
    // librdkafka for a record's headers parses them (and allocates, even for none), which
    // every event would pay.
    let tick_ms = tick_time(payload).filter(|_| {
        message
            .headers()
            .is_some_and(|headers| headers.iter().any(|h| h.key == TICK_HEADER))
    });
    SourceRecord {
        partition: u32::try_from(message.partition()).unwrap_or(0),
        offset: message.offset(),
        timestamp_ms: message.timestamp().to_millis(),
        key: message.key(),
        payload,
        tick_ms,
    }
}
