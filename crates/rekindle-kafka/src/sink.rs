use std::sync::Arc;

use rdkafka::client::ClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use tracing::error;

use crate::source::brokers_up;
use crate::{KafkaError, KafkaSettings, SourceObserver};

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

/// An idempotent producer whose sends are awaited until the broker has every record.
#[derive(Clone)]
pub struct Sink {
    producer: Producer,
}

impl Sink {
    pub fn new(
        settings: &KafkaSettings,
        observer: Arc<dyn SourceObserver>,
    ) -> Result<Sink, KafkaError> {
        Ok(Sink {
            producer: settings
                .producer_config()
                .create_with_context(SinkContext { observer })?,
        })
    }

    pub fn producer(&self) -> Producer {
        self.producer.clone()
    }

    /// Records handed to the producer and not yet acknowledged (ticks included).
    pub fn in_flight(&self) -> i32 {
        use rdkafka::producer::Producer;
        self.producer.in_flight_count()
    }

    /// Sends records and returns once the broker acknowledged all of them, or with the
    /// first failure. librdkafka retries transient errors itself (idempotently, so retries
    /// never duplicate or reorder).
    pub async fn send_all<'a>(
        &self,
        records: impl IntoIterator<Item = Outgoing<'a>>,
    ) -> Result<usize, KafkaError> {
        let mut pending: Vec<(DeliveryFuture, &'a str)> = Vec::new();
        let mut acked = 0;
        for out in records {
            loop {
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
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push((delivery, out.topic));
                        break;
                    }
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                        _,
                    )) => {
                        // Backpressure: wait for what is in flight before enqueuing more.
                        acked += await_all(&mut pending).await?;
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            }
        }
        acked += await_all(&mut pending).await?;
        Ok(acked)
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

async fn await_all(pending: &mut Vec<(DeliveryFuture, &str)>) -> Result<usize, KafkaError> {
    let n = pending.len();
    for (delivery, topic) in pending.drain(..) {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => {
                return Err(KafkaError::Delivery {
                    topic: topic.to_string(),
                    reason: e.to_string(),
                })
            }
            Err(_) => {
                return Err(KafkaError::Delivery {
                    topic: topic.to_string(),
                    reason: "producer dropped the record".into(),
                })
            }
        }
    }
    Ok(n)
}
