//! Dead letters: records the worker cannot use, forwarded unchanged (key, payload) to the
//! dead-letter topic with headers that say where they came from and what was wrong.

use rekindle_events::EventError;
use rekindle_kafka::{Outgoing, SourceRecord};

pub const HEADER_SOURCE_TOPIC: &str = "rekindle-source-topic";
pub const HEADER_SOURCE_PARTITION: &str = "rekindle-source-partition";
pub const HEADER_SOURCE_OFFSET: &str = "rekindle-source-offset";
/// A short, bounded error kind (the label of `rekindle_ingest_records_malformed_total`).
pub const HEADER_ERROR_KIND: &str = "rekindle-error-kind";
pub const HEADER_ERROR: &str = "rekindle-error";
/// Set, to the original length, when the payload was too large to forward.
pub const HEADER_PAYLOAD_OMITTED: &str = "rekindle-payload-omitted";

pub fn dead_letter<'a>(
    dead_letter_topic: &'a str,
    source_topic: &str,
    record: &SourceRecord<'a>,
    error: &EventError,
) -> Outgoing<'a> {
    let mut headers = vec![
        (HEADER_SOURCE_TOPIC, source_topic.to_string()),
        (HEADER_SOURCE_PARTITION, record.partition.to_string()),
        (HEADER_SOURCE_OFFSET, record.offset.to_string()),
        (HEADER_ERROR_KIND, error.kind().to_string()),
        (HEADER_ERROR, error.to_string()),
    ];
    // A record rejected for its size may not fit the producer's limit either; the source
    // headers still locate the original.
    let payload = if matches!(error, EventError::Oversized { .. }) {
        headers.push((HEADER_PAYLOAD_OMITTED, record.payload.len().to_string()));
        &[][..]
    } else {
        record.payload
    };
    Outgoing {
        topic: dead_letter_topic,
        key: record.key,
        payload,
        headers,
    }
}
