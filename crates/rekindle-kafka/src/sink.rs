use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use crate::{KafkaError, KafkaSettings};

/// An idempotent producer whose sends are awaited until the broker has every record.
#[derive(Clone)]
pub struct Sink {
    producer: FutureProducer,
}

impl Sink {
    pub fn new(settings: &KafkaSettings) -> Result<Sink, KafkaError> {
        Ok(Sink {
            producer: settings.producer_config().create()?,
        })
    }

    pub fn producer(&self) -> FutureProducer {
        self.producer.clone()
    }

    /// Sends `(key, payload)` records to `topic` and returns once the broker acknowledged
    /// all of them, or with the first failure. librdkafka retries transient errors itself
    /// (idempotently, so retries never duplicate or reorder).
    pub async fn send_all<'a>(
        &self,
        topic: &str,
        records: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<usize, KafkaError> {
        let mut pending: Vec<DeliveryFuture> = Vec::new();
        let mut acked = 0;
        for (key, payload) in records {
            loop {
                let record = FutureRecord::to(topic).key(key).payload(payload);
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push(delivery);
                        break;
                    }
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                        _,
                    )) => {
                        // Backpressure: wait for what is in flight before enqueuing more.
                        acked += await_all(topic, &mut pending).await?;
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            }
        }
        acked += await_all(topic, &mut pending).await?;
        Ok(acked)
    }
}

async fn await_all(topic: &str, pending: &mut Vec<DeliveryFuture>) -> Result<usize, KafkaError> {
    let n = pending.len();
    for delivery in pending.drain(..) {
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
