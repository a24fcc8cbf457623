use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use tracing::error;

use crate::source::brokers_up;
use crate::{KafkaError, KafkaSettings, Source, SourceObserver};

/// The producer's callbacks. They run on librdkafka's own polling thread, so broker
/// reachability is reported even while the worker waits on acknowledgements and polls no
/// consumer.
pub struct SinkContext {
    observer: Arc<dyn SourceObserver>,
}

impl ClientContext for SinkContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.observer.all_brokers_down();
        }
        error!(error = %error, reason, "librdkafka producer error");
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        self.observer.brokers_up(brokers_up(&statistics));
    }
}

/// The producer type of a [`Sink`], shared with the clock ticker.
pub type Producer = FutureProducer<SinkContext>;

/// An idempotent producer whose sends are awaited until the broker has every record;
/// optionally transactional.
#[derive(Clone)]
pub struct Sink {
    producer: Producer,
    transactional: bool,
}

/// How long a transaction step may take before it is reported as failed.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

impl Sink {
    pub fn new(
        settings: &KafkaSettings,
        observer: Arc<dyn SourceObserver>,
    ) -> Result<Sink, KafkaError> {
        Ok(Sink {
            producer: settings
                .producer_config()
                .create_with_context(SinkContext { observer })?,
            transactional: false,
        })
    }

    /// A transactional producer (`transactional.id`, stable per worker so that a restarted
    /// worker fences its previous incarnation). Blocks until the broker registered it.
    pub fn transactional(
        settings: &KafkaSettings,
        transactional_id: &str,
        observer: Arc<dyn SourceObserver>,
    ) -> Result<Sink, KafkaError> {
        let mut config = settings.producer_config();
        config.set("transactional.id", transactional_id);
        let producer: Producer = config.create_with_context(SinkContext { observer })?;
        blocking(|| producer.init_transactions(TRANSACTION_TIMEOUT)).map_err(transaction_error)?;
        Ok(Sink {
            producer,
            transactional: true,
        })
    }

    pub fn is_transactional(&self) -> bool {
        self.transactional
    }

    pub fn begin(&self) -> Result<(), KafkaError> {
        self.producer.begin_transaction().map_err(transaction_error)
    }

    /// Adds the consumed positions to the transaction and commits it: triggers, changelog
    /// and input offsets become visible together or not at all.
    pub fn commit(&self, source: &Source, next_offsets: &[(u32, i64)]) -> Result<(), KafkaError> {
        let offsets = source.offsets(next_offsets)?;
        let metadata = source
            .group_metadata()
            .ok_or_else(|| KafkaError::Transaction {
                abortable: true,
                reason: "no consumer group metadata (not in a group yet)".into(),
            })?;
        retrying(|| {
            self.producer
                .send_offsets_to_transaction(&offsets, &metadata, TRANSACTION_TIMEOUT)
        })?;
        retrying(|| self.producer.commit_transaction(TRANSACTION_TIMEOUT))
    }

    /// Aborts the open transaction: none of its records become visible to `read_committed`
    /// consumers.
    pub fn abort(&self) -> Result<(), KafkaError> {
        blocking(|| self.producer.abort_transaction(TRANSACTION_TIMEOUT)).map_err(transaction_error)
    }

    /// Sends changelog records to the partition of the same number as their state's, and
    /// returns per partition the offset after its last record.
    pub async fn send_changelog<'a>(
        &self,
        topic: &str,
        records: impl IntoIterator<Item = (u32, &'a [u8], Option<&'a [u8]>)>,
    ) -> Result<Vec<(u32, i64)>, KafkaError> {
        let mut pending: Vec<(u32, DeliveryFuture)> = Vec::new();
        let mut next: std::collections::BTreeMap<u32, i64> = Default::default();
        for (partition, key, value) in records {
            loop {
                let mut record = FutureRecord::<[u8], [u8]>::to(topic)
                    .partition(partition as i32)
                    .key(key);
                if let Some(value) = value {
                    record = record.payload(value);
                }
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push((partition, delivery));
                        break;
                    }
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                        _,
                    )) => await_changelog(&mut pending, &mut next, topic).await?,
                    Err((e, _)) => return Err(e.into()),
                }
            }
        }
        await_changelog(&mut pending, &mut next, topic).await?;
        Ok(next.into_iter().collect())
    }

    pub fn producer(&self) -> Producer {
        self.producer.clone()
    }

    /// Records handed to the producer and not yet acknowledged (ticks included).
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// Hands records to the producer without waiting for the broker: their acknowledgements
    /// are collected by `deliveries`, each with its `tag`. When librdkafka's queue is full
    /// it waits for what is in flight first (backpressure).
    pub async fn enqueue<'a, T>(
        &self,
        records: impl IntoIterator<Item = (Outgoing<'a>, T)>,
        deliveries: &mut Deliveries<T>,
    ) -> Result<(), KafkaError> {
        for (out, tag) in records {
            loop {
                match self.producer.send_result(future_record(&out)) {
                    Ok(delivery) => {
                        deliveries.push(delivery, out.topic, tag);
                        break;
                    }
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                        _,
                    )) => deliveries.settle_all().await?,
                    Err((e, _)) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    /// Sends records and returns once the broker acknowledged all of them, or with the
    /// first failure. librdkafka retries transient errors itself (idempotently, so retries
    /// never duplicate or reorder).
    pub async fn send_all<'a>(
        &self,
        records: impl IntoIterator<Item = Outgoing<'a>>,
    ) -> Result<usize, KafkaError> {
        let mut deliveries = Deliveries::default();
        self.enqueue(records.into_iter().map(|out| (out, ())), &mut deliveries)
            .await?;
        deliveries.settle_all().await?;
        Ok(deliveries.take_acknowledged().count())
    }
}

fn future_record<'b>(out: &'b Outgoing<'_>) -> FutureRecord<'b, [u8], [u8]> {
    let mut record = FutureRecord::<[u8], [u8]>::to(out.topic).payload(out.payload);
    if let Some(key) = out.key {
        record = record.key(key);
    }
    if !out.headers.is_empty() {
        let mut headers = OwnedHeaders::new_with_capacity(out.headers.len());
        for (key, value) in &out.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        record = record.headers(headers);
    }
    record
}

/// Records handed to the producer whose acknowledgements have not been collected yet, in
/// the order they were sent, each with a tag of the caller's; and the tags of those
/// acknowledged since the last [`Deliveries::take_acknowledged`].
pub struct Deliveries<T> {
    pending: VecDeque<(DeliveryFuture, usize, T)>,
    /// Topic names, referred to by index from `pending` (a handful per worker).
    topics: Vec<String>,
    acknowledged: Vec<T>,
}

impl<T> Default for Deliveries<T> {
    fn default() -> Self {
        Deliveries {
            pending: VecDeque::new(),
            topics: Vec::new(),
            acknowledged: Vec::new(),
        }
    }
}

impl<T> Deliveries<T> {
    fn push(&mut self, delivery: DeliveryFuture, topic: &str, tag: T) {
        let index = match self.topics.iter().position(|t| t == topic) {
            Some(index) => index,
            None => {
                self.topics.push(topic.to_string());
                self.topics.len() - 1
            }
        };
        self.pending.push_back((delivery, index, tag));
    }

    /// Collects the acknowledgements that have already arrived, from the oldest record up to
    /// the first still in flight, without waiting. A refused record is an error.
    pub fn settle_ready(&mut self) -> Result<(), KafkaError> {
        let mut context = Context::from_waker(Waker::noop());
        while let Some((delivery, _, _)) = self.pending.front_mut() {
            let result = match Pin::new(delivery).poll(&mut context) {
                Poll::Pending => return Ok(()),
                Poll::Ready(result) => result,
            };
            if let Some((_, topic, tag)) = self.pending.pop_front() {
                delivered(result, &self.topics[topic])?;
                self.acknowledged.push(tag);
            }
        }
        Ok(())
    }

    /// Waits until every record is acknowledged, or for the first refusal.
    pub async fn settle_all(&mut self) -> Result<(), KafkaError> {
        while let Some((delivery, topic, tag)) = self.pending.pop_front() {
            delivered(delivery.await, &self.topics[topic])?;
            self.acknowledged.push(tag);
        }
        Ok(())
    }

    /// The tags of the records acknowledged since the last call, oldest first.
    pub fn take_acknowledged(&mut self) -> std::vec::Drain<'_, T> {
        self.acknowledged.drain(..)
    }

    /// Forgets every record in flight (after an aborted transaction: none of them count).
    pub fn clear(&mut self) {
        self.pending.clear();
        self.acknowledged.clear();
    }
}

/// One record to send.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    pub headers: Vec<(&'static str, String)>,
}

async fn await_changelog(
    pending: &mut Vec<(u32, DeliveryFuture)>,
    next: &mut std::collections::BTreeMap<u32, i64>,
    topic: &str,
) -> Result<(), KafkaError> {
    for (partition, delivery) in pending.drain(..) {
        let after = delivered(delivery.await, topic)? + 1;
        let slot = next.entry(partition).or_insert(after);
        *slot = (*slot).max(after);
    }
    Ok(())
}

/// Runs a blocking librdkafka call without stalling the async runtime's other tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Retries a transaction step that librdkafka reports as retriable (a timeout, a coordinator
/// that is loading): the step is safe to call again, and aborting instead could race a
/// commit that did reach the coordinator.
fn retrying(step: impl Fn() -> rdkafka::error::KafkaResult<()>) -> Result<(), KafkaError> {
    const ATTEMPTS: usize = 5;
    let mut attempt = 1;
    loop {
        match blocking(&step) {
            Ok(()) => return Ok(()),
            Err(rdkafka::error::KafkaError::Transaction(e))
                if e.is_retriable() && attempt < ATTEMPTS =>
            {
                tracing::warn!(error = %e, attempt, "transaction step failed; retrying");
                attempt += 1;
            }
            Err(e) => return Err(transaction_error(e)),
        }
    }
}

fn transaction_error(e: rdkafka::error::KafkaError) -> KafkaError {
    match &e {
        rdkafka::error::KafkaError::Transaction(inner) if inner.is_fatal() => {
            KafkaError::Transaction {
                abortable: false,
                reason: e.to_string(),
            }
        }
        rdkafka::error::KafkaError::Transaction(inner) => KafkaError::Transaction {
            abortable: inner.txn_requires_abort() || inner.is_retriable(),
            reason: e.to_string(),
        },
        _ => KafkaError::Client(e),
    }
}

/// A delivery's outcome: the record's offset, or why the broker did not take it.
fn delivered(result: <DeliveryFuture as Future>::Output, topic: &str) -> Result<i64, KafkaError> {
    match result {
        Ok(Ok(delivered)) => Ok(delivered.offset),
        Ok(Err((e, _))) => Err(KafkaError::Delivery {
            topic: topic.to_string(),
            reason: e.to_string(),
        }),
        Err(_) => Err(KafkaError::Delivery {
            topic: topic.to_string(),
            reason: "producer dropped the record".into(),
        }),
    }
}
