use thiserror::Error;

#[derive(Debug, Error)]
pub enum KafkaError {
    #[error("Kafka client: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("delivery of a record to {topic} failed: {reason}")]
    Delivery { topic: String, reason: String },
    #[error("topic {topic}: {reason}")]
    Topic { topic: String, reason: String },
    /// `abortable`: aborting the transaction and processing the batch again recovers;
    /// otherwise the producer is unusable (fenced by a newer incarnation, or fatal).
    #[error("transaction failed: {reason}")]
    Transaction { abortable: bool, reason: String },
    #[error("restoring partition {partition} from the changelog: {reason}")]
    Restore { partition: u32, reason: String },
}
