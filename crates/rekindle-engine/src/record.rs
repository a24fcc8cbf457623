use rekindle_events::{ActivityEvent, EventError};

/// One record of a partition's log, as the source saw it.
#[derive(Debug)]
pub struct Record<'a> {
    pub partition: u32,
    pub offset: i64,
    pub kind: RecordKind<'a>,
}

#[derive(Debug)]
pub enum RecordKind<'a> {
    /// A clock tick: the pipeline clock may advance to this time.
    Tick(i64),
    /// An Avro payload from the activity topic, with the record's Kafka timestamp.
    Avro {
        payload: &'a [u8],
        timestamp_ms: Option<i64>,
    },
    /// An event already parsed (replay files), with the optional ingest time.
    Event {
        event: Box<ActivityEvent>,
        ingest_ms: Option<i64>,
    },
    /// A record the source could not read at all.
    Unreadable(EventError),
}
