//! Avro object container files of activity events (the schema in the header, then blocks
//! of datums): what `rekindle gen --file-format avro` writes, readable by any Avro tool.

use std::io::Write;

use apache_avro::Writer;

use crate::codec::activity_schema;
use crate::{ActivityEvent, EventError};

/// Writes activity events to an Avro object container file.
pub struct ContainerWriter<W: Write> {
    writer: Writer<'static, W>,
}

impl<W: Write> ContainerWriter<W> {
    pub fn new(out: W) -> Result<Self, EventError> {
        let schema = activity_schema()?;
        let writer = Writer::new(schema, out).map_err(|e| EventError::Encode(e.to_string()))?;
        Ok(ContainerWriter { writer })
    }

    pub fn append(&mut self, event: &ActivityEvent) -> Result<(), EventError> {
        self.writer
            .append_ser(event)
            .map_err(|e| EventError::Encode(e.to_string()))?;
        Ok(())
    }

    /// Writes the last block and hands back the output.
    pub fn finish(self) -> Result<W, EventError> {
        self.writer
            .into_inner()
            .map_err(|e| EventError::Encode(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn a_container_file_reads_back_with_the_schema_in_its_header() {
        let events: Vec<ActivityEvent> = (0..1000)
            .map(|i| ActivityEvent {
                event_id: format!("e{i}"),
                user_id: format!("u{}", i % 37),
                event_type: if i % 10 == 0 { "purchase" } else { "app_open" }.into(),
                timestamp_ms: 1_700_000_000_000 + i,
                session_seconds: i as i32 % 600,
                amount: if i % 10 == 0 { 9.5 } else { 0.0 },
                timezone: (i % 3 == 0).then(|| "Europe/Berlin".to_string()),
                attributes: BTreeMap::from([("source".to_string(), "test".to_string())]),
            })
            .collect();
        let mut writer = ContainerWriter::new(Vec::new()).expect("writer");
        for e in &events {
            writer.append(e).expect("append");
        }
        let bytes = writer.finish().expect("finish");
        // A reader that knows nothing but the file: the schema comes from its header.
        let reader = apache_avro::Reader::new(bytes.as_slice()).expect("container header");
        let back: Vec<ActivityEvent> = reader
            .map(|v| apache_avro::from_value(&v.expect("datum")).expect("event"))
            .collect();
        assert_eq!(back, events);
    }
}
