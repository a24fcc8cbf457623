use thiserror::Error;

/// Everything that can be wrong with a record on its way in or out.
///
/// Decoding errors are values, never panics: the caller counts them by [`EventError::kind`]
/// and moves on.
#[derive(Debug, Error)]
pub enum EventError {
    #[error("embedded Avro schema {name} does not parse: {source}")]
    Schema {
        name: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("empty payload")]
    Empty,
    #[error("payload of {len} bytes exceeds the limit of {limit}")]
    Oversized { len: usize, limit: usize },
    #[error("Confluent-framed payload names schema id {0}, which is not accepted")]
    UnknownSchemaId(u32),
    #[error("payload is not a valid Avro ActivityEvent: {0}")]
    Avro(String),
    #[error("{trailing} bytes follow the Avro datum")]
    TrailingBytes { trailing: usize },
    #[error("invalid event: {0}")]
    Invalid(&'static str),
    #[error("line is not valid JSON for an event or a tick: {0}")]
    Json(String),
    #[error("cannot encode trigger: {0}")]
    Encode(String),
}

impl EventError {
    /// A short, bounded label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            EventError::Schema { .. } => "schema",
            EventError::Empty => "empty",
            EventError::Oversized { .. } => "oversized",
            EventError::UnknownSchemaId(_) => "unknown_schema_id",
            EventError::Avro(_) | EventError::TrailingBytes { .. } => "avro",
            EventError::Invalid(_) => "invalid",
            EventError::Json(_) => "json",
            EventError::Encode(_) => "encode",
        }
    }
}
