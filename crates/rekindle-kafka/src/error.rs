use thiserror::Error;

#[derive(Debug, Error)]
pub enum KafkaError {
    #[error("Kafka client: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("delivery of a record to {topic} failed: {reason}")]
    Delivery { topic: String, reason: String },
    #[error("topic {topic}: {reason}")]
    Topic { topic: String, reason: String },
}
