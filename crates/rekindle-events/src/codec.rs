//! Avro on the wire, in the two framings producers use.
//!
//! * Confluent wire format: byte `0`, a 4-byte big-endian schema id, then the Avro datum.
//! * A plain Avro datum with no framing.
//!
//! A plain datum can also start with byte `0` (an empty `event_id`), so a payload is read as
//! Confluent-framed when that decodes cleanly, and as plain otherwise.

use std::io::Cursor;
use std::sync::OnceLock;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;

use crate::{ActivityEvent, ActivityView, AuditRecord, EventError, ReactivationTrigger};

pub const ACTIVITY_SCHEMA_JSON: &str = include_str!("../../../schemas/activity_event.avsc");
pub const TRIGGER_SCHEMA_JSON: &str = include_str!("../../../schemas/reactivation_trigger.avsc");
pub const AUDIT_SCHEMA_JSON: &str = include_str!("../../../schemas/audit_record.avsc");

const MAGIC_BYTE: u8 = 0;
const FRAME_HEADER_LEN: usize = 5;
/// Caps what a malformed length prefix can make the decoder allocate.
const MAX_DECODE_ALLOCATION: usize = 16 * 1024 * 1024;

static ACTIVITY_SCHEMA: OnceLock<Schema> = OnceLock::new();
static TRIGGER_SCHEMA: OnceLock<Schema> = OnceLock::new();
static AUDIT_SCHEMA: OnceLock<Schema> = OnceLock::new();

fn embedded(
    cell: &'static OnceLock<Schema>,
    name: &'static str,
    json: &str,
) -> Result<&'static Schema, EventError> {
    if let Some(schema) = cell.get() {
        return Ok(schema);
    }
    // Process-wide in apache-avro; set before any of its readers runs.
    apache_avro::util::max_allocation_bytes(MAX_DECODE_ALLOCATION);
    let schema = Schema::parse_str(json).map_err(|e| EventError::Schema {
        name,
        source: Box::new(e),
    })?;
    Ok(cell.get_or_init(|| schema))
}

/// Decodes activity events. Built once per worker; cheap to share by reference.
///
/// Events are read with `serde_avro_fast`, straight into [`ActivityEvent`], against the
/// same `activity_event.avsc` the rest of the crate reads with `apache-avro` (which first
/// builds a generic value and then converts it: most of a decode's time). A property test
/// holds the two to the same answer, value or error, on valid, corrupted and random bytes.
pub struct EventDecoder {
    schema: serde_avro_fast::Schema,
    accepted_schema_ids: Vec<u32>,
    max_payload_bytes: usize,
}

impl EventDecoder {
    /// `accepted_schema_ids` empty means any schema id in a Confluent frame is accepted
    /// (the datum must still match `activity_event.avsc`).
    pub fn new(
        accepted_schema_ids: Vec<u32>,
        max_payload_bytes: usize,
    ) -> Result<Self, EventError> {
        let schema = ACTIVITY_SCHEMA_JSON
            .parse::<serde_avro_fast::Schema>()
            .map_err(|e| EventError::Schema {
                name: "activity_event",
                source: Box::new(e),
            })?;
        Ok(EventDecoder {
            schema,
            accepted_schema_ids,
            max_payload_bytes,
        })
    }

    pub fn decode(&self, payload: &[u8]) -> Result<ActivityEvent, EventError> {
        self.decode_as(payload)
    }

    /// As [`EventDecoder::decode`], the strings borrowed from `payload` and the attributes
    /// skipped (read past, still checked against the schema): the engine's per-record path.
    pub fn decode_view<'a>(&self, payload: &'a [u8]) -> Result<ActivityView<'a>, EventError> {
        self.decode_as(payload)
    }

    fn decode_as<'a, T: serde::Deserialize<'a>>(&self, payload: &'a [u8]) -> Result<T, EventError> {
        decode_payload(
            |datum| decode_event_datum(&self.schema, datum),
            &self.accepted_schema_ids,
            self.max_payload_bytes,
            payload,
        )
    }
}

fn decode_event_datum<'a, T: serde::Deserialize<'a>>(
    schema: &serde_avro_fast::Schema,
    datum: &'a [u8],
) -> Result<T, EventError> {
    use std::io::BufRead;
    let mut state = serde_avro_fast::de::DeserializerState::from_slice(datum, schema);
    let event =
        T::deserialize(state.deserializer()).map_err(|e| EventError::Avro(e.to_string()))?;
    let mut rest = state.into_reader();
    let trailing = rest.fill_buf().map(<[u8]>::len).unwrap_or(0);
    if trailing > 0 {
        return Err(EventError::TrailingBytes { trailing });
    }
    Ok(event)
}

/// Decodes triggers, framed or plain: for `rekindle tail` and delivery-side tooling.
pub struct TriggerDecoder {
    reader: GenericDatumReader<'static>,
}

impl TriggerDecoder {
    pub fn new() -> Result<Self, EventError> {
        let schema = embedded(&TRIGGER_SCHEMA, "reactivation_trigger", TRIGGER_SCHEMA_JSON)?;
        let reader =
            GenericDatumReader::builder(schema)
                .build()
                .map_err(|e| EventError::Schema {
                    name: "reactivation_trigger",
                    source: Box::new(e),
                })?;
        Ok(TriggerDecoder { reader })
    }

    pub fn decode(&self, payload: &[u8]) -> Result<ReactivationTrigger, EventError> {
        decode_payload(
            |datum| decode_datum(&self.reader, datum),
            &[],
            usize::MAX,
            payload,
        )
    }
}

fn decode_payload<'a, T>(
    decode_datum: impl Fn(&'a [u8]) -> Result<T, EventError>,
    accepted_schema_ids: &[u32],
    max_payload_bytes: usize,
    payload: &'a [u8],
) -> Result<T, EventError> {
    if payload.is_empty() {
        return Err(EventError::Empty);
    }
    if payload.len() > max_payload_bytes {
        return Err(EventError::Oversized {
            len: payload.len(),
            limit: max_payload_bytes,
        });
    }
    if payload[0] == MAGIC_BYTE && payload.len() >= FRAME_HEADER_LEN {
        let id = u32::from_be_bytes([payload[1], payload[2], payload[3], payload[4]]);
        return match decode_datum(&payload[FRAME_HEADER_LEN..]) {
            Ok(_) if !accepted_schema_ids.is_empty() && !accepted_schema_ids.contains(&id) => {
                Err(EventError::UnknownSchemaId(id))
            }
            Ok(value) => Ok(value),
            Err(framed_error) => decode_datum(payload).map_err(|_| framed_error),
        };
    }
    decode_datum(payload)
}

fn decode_datum<T: serde::de::DeserializeOwned>(
    reader: &GenericDatumReader<'static>,
    datum: &[u8],
) -> Result<T, EventError> {
    let mut cursor = Cursor::new(datum);
    let value = reader
        .read_value(&mut cursor)
        .map_err(|e| EventError::Avro(e.to_string()))?;
    let consumed = usize::try_from(cursor.position()).unwrap_or(usize::MAX);
    if consumed < datum.len() {
        return Err(EventError::TrailingBytes {
            trailing: datum.len() - consumed,
        });
    }
    apache_avro::from_value::<T>(&value).map_err(|e| EventError::Avro(e.to_string()))
}

/// Writes values of one embedded schema, Confluent-framed when a schema id is configured.
struct DatumEncoder {
    schema: &'static Schema,
    schema_id: Option<u32>,
}

impl DatumEncoder {
    fn encode<T: serde::Serialize>(&self, value: &T) -> Result<Vec<u8>, EventError> {
        let writer = GenericDatumWriter::builder(self.schema)
            .build()
            .map_err(|e| EventError::Encode(e.to_string()))?;
        let datum = writer
            .write_ser_to_vec(value)
            .map_err(|e| EventError::Encode(e.to_string()))?;
        Ok(match self.schema_id {
            Some(id) => {
                let mut framed = Vec::with_capacity(FRAME_HEADER_LEN + datum.len());
                framed.push(MAGIC_BYTE);
                framed.extend_from_slice(&id.to_be_bytes());
                framed.extend_from_slice(&datum);
                framed
            }
            None => datum,
        })
    }
}

/// Encodes triggers, Confluent-framed when a schema id is configured.
pub struct TriggerEncoder(DatumEncoder);

impl TriggerEncoder {
    pub fn new(schema_id: Option<u32>) -> Result<Self, EventError> {
        let schema = embedded(&TRIGGER_SCHEMA, "reactivation_trigger", TRIGGER_SCHEMA_JSON)?;
        Ok(TriggerEncoder(DatumEncoder { schema, schema_id }))
    }

    pub fn encode(&self, trigger: &ReactivationTrigger) -> Result<Vec<u8>, EventError> {
        self.0.encode(trigger)
    }
}

/// Encodes audit records, Confluent-framed when a schema id is configured.
pub struct AuditEncoder(DatumEncoder);

impl AuditEncoder {
    pub fn new(schema_id: Option<u32>) -> Result<Self, EventError> {
        let schema = embedded(&AUDIT_SCHEMA, "audit_record", AUDIT_SCHEMA_JSON)?;
        Ok(AuditEncoder(DatumEncoder { schema, schema_id }))
    }

    pub fn encode(&self, record: &AuditRecord) -> Result<Vec<u8>, EventError> {
        self.0.encode(record)
    }
}

/// Decodes audit records, framed or plain.
pub struct AuditDecoder {
    reader: GenericDatumReader<'static>,
}

impl AuditDecoder {
    pub fn new() -> Result<Self, EventError> {
        let schema = embedded(&AUDIT_SCHEMA, "audit_record", AUDIT_SCHEMA_JSON)?;
        let reader =
            GenericDatumReader::builder(schema)
                .build()
                .map_err(|e| EventError::Schema {
                    name: "audit_record",
                    source: Box::new(e),
                })?;
        Ok(AuditDecoder { reader })
    }

    pub fn decode(&self, payload: &[u8]) -> Result<AuditRecord, EventError> {
        decode_payload(
            |datum| decode_datum(&self.reader, datum),
            &[],
            usize::MAX,
            payload,
        )
    }
}

/// The parsed `activity_event.avsc`.
pub(crate) fn activity_schema() -> Result<&'static Schema, EventError> {
    embedded(&ACTIVITY_SCHEMA, "activity_event", ACTIVITY_SCHEMA_JSON)
}

/// Encodes an event as the activity schema describes it, Confluent-framed when a schema id
/// is given: used by `rekindle gen` and tests.
pub fn encode_event(event: &ActivityEvent, schema_id: Option<u32>) -> Result<Vec<u8>, EventError> {
    let schema = activity_schema()?;
    DatumEncoder { schema, schema_id }.encode(event)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn event(event_id: &str) -> ActivityEvent {
        ActivityEvent {
            event_id: event_id.into(),
            user_id: "user-7".into(),
            event_type: "session_end".into(),
            timestamp_ms: 1_700_000_123_456,
            session_seconds: 321,
            amount: 9.5,
            timezone: Some("America/New_York".into()),
            attributes: BTreeMap::from([("platform".to_string(), "ios".to_string())]),
        }
    }

    fn decoder() -> EventDecoder {
        EventDecoder::new(Vec::new(), 1 << 20).expect("embedded schema parses")
    }

    #[test]
    fn round_trips_plain_and_framed() {
        let d = decoder();
        for framing in [None, Some(42)] {
            let bytes = encode_event(&event("e1"), framing).expect("encodes");
            assert_eq!(d.decode(&bytes).expect("decodes"), event("e1"));
        }
    }

    #[test]
    fn plain_datum_with_empty_event_id_is_not_mistaken_for_a_frame() {
        let d = decoder();
        let bytes = encode_event(&event(""), None).expect("encodes");
        assert_eq!(bytes[0], 0);
        assert_eq!(d.decode(&bytes).expect("decodes"), event(""));
    }

    #[test]
    fn unaccepted_schema_id_is_an_error() {
        let d = EventDecoder::new(vec![7], 1 << 20).expect("decoder");
        let bytes = encode_event(&event("e"), Some(8)).expect("encodes");
        assert!(matches!(
            d.decode(&bytes),
            Err(EventError::UnknownSchemaId(8))
        ));
        let bytes = encode_event(&event("e"), Some(7)).expect("encodes");
        assert!(d.decode(&bytes).is_ok());
    }

    #[test]
    fn malformed_payloads_are_error_values() {
        let d = decoder();
        assert!(matches!(d.decode(&[]), Err(EventError::Empty)));
        assert!(matches!(
            d.decode(&[0u8; 5000][..]).map_err(|e| e.kind()),
            Err("avro")
        ));
        let mut bytes = encode_event(&event("e"), Some(1)).expect("encodes");
        bytes.truncate(bytes.len() - 3);
        assert!(d.decode(&bytes).is_err());
        let mut bytes = encode_event(&event("e"), None).expect("encodes");
        bytes.extend_from_slice(b"junk");
        assert!(d.decode(&bytes).is_err());
        let small = EventDecoder::new(Vec::new(), 8).expect("decoder");
        assert!(matches!(
            small.decode(&[1u8; 9]),
            Err(EventError::Oversized { .. })
        ));
        // A string length prefix claiming gigabytes must not be honoured.
        assert!(d.decode(&[0xfe, 0xff, 0xff, 0xff, 0x0f, 1, 2]).is_err());
    }

    #[test]
    fn trigger_encodes_against_its_schema() {
        let trigger = ReactivationTrigger {
            trigger_id: "t".into(),
            user_id: "u".into(),
            rule_id: "lapsed_7d".into(),
            fired_at_ms: 3,
            due_at_ms: 2,
            last_active_ms: 1,
            lifecycle_stage: "at_risk".into(),
            features: BTreeMap::from([("active_days".to_string(), 4.0)]),
            schema_version: crate::TRIGGER_SCHEMA_VERSION,
            rule_config_hash: "00ff".into(),
            segment: "loyal".into(),
            arm: "coupon".into(),
        };
        let framed = TriggerEncoder::new(Some(9))
            .expect("encoder")
            .encode(&trigger)
            .expect("encodes");
        assert_eq!(&framed[..5], &[0, 0, 0, 0, 9]);
        let schema = Schema::parse_str(TRIGGER_SCHEMA_JSON).expect("schema");
        let reader = GenericDatumReader::builder(&schema)
            .build()
            .expect("reader");
        let value = reader
            .read_value(&mut Cursor::new(&framed[5..]))
            .expect("datum");
        let back: ReactivationTrigger = apache_avro::from_value(&value).expect("shape");
        assert_eq!(back, trigger);
    }

    /// A dormant_30d trigger with every field set.
    fn dormant_trigger() -> ReactivationTrigger {
        ReactivationTrigger {
            trigger_id: "t".into(),
            user_id: "u".into(),
            rule_id: "dormant_30d".into(),
            fired_at_ms: 3,
            due_at_ms: 2,
            last_active_ms: 1,
            lifecycle_stage: "dormant".into(),
            features: BTreeMap::from([("inactive_days".to_string(), 30.0)]),
            schema_version: crate::TRIGGER_SCHEMA_VERSION,
            rule_config_hash: "abc".into(),
            segment: "loyal".into(),
            arm: "coupon".into(),
        }
    }

    #[test]
    fn audit_records_round_trip_with_and_without_a_release_time() {
        let trigger = dormant_trigger();
        let encoder = AuditEncoder::new(None).expect("encoder");
        let decoder = AuditDecoder::new().expect("decoder");
        for release_at_ms in [None, Some(1_700_000_000_000)] {
            let record = AuditRecord {
                trigger: trigger.clone(),
                decision: "deferred".into(),
                reason: "quiet_hours".into(),
                release_at_ms,
                group: "treatment".into(),
            };
            let bytes = encoder.encode(&record).expect("encodes");
            assert_eq!(decoder.decode(&bytes).expect("decodes"), record);
        }
    }

    /// The fields a record has, by name (a record value's own, not its nested records').
    fn field_names(value: &apache_avro::types::Value) -> Vec<String> {
        match value {
            apache_avro::types::Value::Record(fields) => {
                fields.iter().map(|(name, _)| name.clone()).collect()
            }
            other => panic!("not a record: {other:?}"),
        }
    }

    /// `value` without the fields `schema` does not know: what a writer of that (older)
    /// schema generation would have written.
    fn as_written_by(
        value: apache_avro::types::Value,
        schema: &Schema,
    ) -> apache_avro::types::Value {
        use apache_avro::types::Value;
        let Schema::Record(record) = schema else {
            panic!("not a record schema");
        };
        let Value::Record(fields) = value else {
            panic!("not a record value");
        };
        let kept = fields
            .into_iter()
            .filter_map(|(name, v)| {
                let field = record.fields.iter().find(|f| f.name == name)?;
                let v = match (&field.schema, v) {
                    (nested @ Schema::Record(_), v) => as_written_by(v, nested),
                    (_, v) => v,
                };
                Some((name, v))
            })
            .collect();
        Value::Record(kept)
    }

    /// Reads `datum`, written with `writer`, as `reader` sees it (Avro schema resolution).
    fn resolve(datum: &[u8], writer: &Schema, reader: &Schema) -> apache_avro::types::Value {
        GenericDatumReader::builder(writer)
            .reader_schema(reader)
            .build()
            .expect("resolving reader")
            .read_value(&mut Cursor::new(datum))
            .expect("resolves")
    }

    /// Published generations of (trigger, audit record) schemas.
    const GENERATIONS: [(&str, &str, &str); 2] = [
        (
            "v2",
            include_str!("../../../schemas/history/reactivation_trigger.v2.avsc"),
            include_str!("../../../schemas/history/audit_record.v2.avsc"),
        ),
        (
            "v3",
            include_str!("../../../schemas/history/reactivation_trigger.v3.avsc"),
            include_str!("../../../schemas/history/audit_record.v3.avsc"),
        ),
    ];

    /// The trigger as a reader of `schema` sees it: fields the schema lacks at their
    /// defaults.
    fn seen_through(trigger: &ReactivationTrigger, schema: &Schema) -> ReactivationTrigger {
        let Schema::Record(record) = schema else {
            panic!("not a record schema");
        };
        let has = |name: &str| record.fields.iter().any(|f| f.name == name);
        let mut seen = trigger.clone();
        if !has("segment") {
            seen.segment.clear();
        }
        if !has("arm") {
            seen.arm.clear();
        }
        seen
    }

    /// Every published generation in schemas/history and the current schema read each
    /// other's records: new fields are skipped by old readers and take their defaults in
    /// new readers, so a delivery service that has not upgraded keeps working.
    #[test]
    fn schema_generations_read_each_other() {
        let trigger = dormant_trigger();
        let audit = AuditRecord {
            trigger: trigger.clone(),
            decision: "suppressed".into(),
            reason: "holdout".into(),
            release_at_ms: None,
            group: "holdout".into(),
        };
        let current_trigger = Schema::parse_str(TRIGGER_SCHEMA_JSON).expect("schema");
        let current_audit = Schema::parse_str(AUDIT_SCHEMA_JSON).expect("schema");
        let new_trigger = TriggerEncoder::new(None)
            .expect("encoder")
            .encode(&trigger)
            .expect("encodes");
        let new_audit = AuditEncoder::new(None)
            .expect("encoder")
            .encode(&audit)
            .expect("encodes");
        let written = |value: apache_avro::types::Value, schema: &Schema| {
            GenericDatumWriter::builder(schema)
                .build()
                .expect("writer")
                .write_value_to_vec(as_written_by(value, schema))
                .expect("an old writer can write it")
        };
        for (name, trigger_json, audit_json) in GENERATIONS {
            let old_trigger = Schema::parse_str(trigger_json).expect("schema");
            let old_audit = Schema::parse_str(audit_json).expect("schema");
            let expected = seen_through(&trigger, &old_trigger);
            assert_ne!(
                expected, trigger,
                "{name} lacks a field of the current schema"
            );

            // New records, old readers: everything they know, nothing they do not.
            let seen = resolve(&new_trigger, &current_trigger, &old_trigger);
            let old_fields = field_names(&seen);
            assert!(
                !old_fields.contains(&"arm".to_string()),
                "{name}: {old_fields:?}"
            );
            let back: ReactivationTrigger = apache_avro::from_value(&seen).expect("old shape");
            assert_eq!(back, expected, "{name}");
            let seen: AuditRecord =
                apache_avro::from_value(&resolve(&new_audit, &current_audit, &old_audit))
                    .expect("old shape");
            assert_eq!(seen.trigger, expected, "{name}");
            assert_eq!(
                (seen.reason.as_str(), seen.group.as_str()),
                ("holdout", "holdout")
            );

            // Old records, new readers: the new fields at their defaults.
            let old = written(
                apache_avro::to_value(&trigger).expect("value"),
                &old_trigger,
            );
            let back: ReactivationTrigger =
                apache_avro::from_value(&resolve(&old, &old_trigger, &current_trigger))
                    .expect("new shape");
            assert_eq!(back, expected, "{name}");
            let old = written(apache_avro::to_value(&audit).expect("value"), &old_audit);
            let back: AuditRecord =
                apache_avro::from_value(&resolve(&old, &old_audit, &current_audit))
                    .expect("new shape");
            assert_eq!(back.trigger, expected, "{name}");
            assert_eq!(back.group, "holdout");
        }
    }

    /// The activity decode as apache-avro does it: the reference the fast decoder is held to.
    fn reference_decode(payload: &[u8]) -> Result<ActivityEvent, EventError> {
        let schema = activity_schema().expect("schema");
        let reader = GenericDatumReader::builder(schema).build().expect("reader");
        decode_payload(|datum| decode_datum(&reader, datum), &[], 1 << 20, payload)
    }

    /// Decoded events compared field by field, the amount by its bits (NaN equals itself:
    /// both decoders must hand validation the same value).
    fn same_event(a: &ActivityEvent, b: &ActivityEvent) -> bool {
        a.event_id == b.event_id
            && a.user_id == b.user_id
            && a.event_type == b.event_type
            && a.timestamp_ms == b.timestamp_ms
            && a.session_seconds == b.session_seconds
            && a.amount.to_bits() == b.amount.to_bits()
            && a.timezone == b.timezone
            && a.attributes == b.attributes
    }

    /// Both decoders give the same event, or both refuse the bytes. The one difference
    /// allowed: the fast decoder refuses some bytes that are not how any writer encodes
    /// the event the reference reads from them (a varint with bits past 64, which
    /// apache-avro drops).
    fn assert_decoders_agree(bytes: &[u8]) -> Result<(), TestCaseError> {
        assert_view_agrees(bytes)?;
        match (decoder().decode(bytes), reference_decode(bytes)) {
            (Ok(fast), Ok(reference)) => {
                prop_assert!(same_event(&fast, &reference), "{fast:?} != {reference:?}")
            }
            (Err(_), Err(_)) => {}
            (Err(fast), Ok(reference)) => {
                let id = bytes
                    .get(1..FRAME_HEADER_LEN)
                    .and_then(|id| <[u8; 4]>::try_from(id).ok())
                    .map(u32::from_be_bytes);
                for framing in [None, id] {
                    let canonical = encode_event(&reference, framing).expect("encodes");
                    prop_assert_ne!(
                        canonical.as_slice(),
                        bytes,
                        "fast refused a canonical encoding: {}",
                        fast
                    );
                }
            }
            (Ok(fast), Err(reference)) => {
                prop_assert!(false, "fast {fast:?}, reference {reference} for {bytes:?}")
            }
        }
        Ok(())
    }

    /// The borrowed view reads what the owned decode reads, and refuses what it refuses.
    fn assert_view_agrees(bytes: &[u8]) -> Result<(), TestCaseError> {
        let decoder = decoder();
        match (decoder.decode_view(bytes), decoder.decode(bytes)) {
            (Ok(view), Ok(event)) => {
                fn fields<'a>(v: ActivityView<'a>) -> impl PartialEq + std::fmt::Debug + 'a {
                    (
                        (v.event_id, v.user_id, v.event_type),
                        (v.timestamp_ms, v.session_seconds, v.amount.to_bits()),
                        v.timezone,
                    )
                }
                prop_assert_eq!(fields(view), fields(event.view()));
            }
            (Err(view), Err(owned)) => prop_assert_eq!(view.to_string(), owned.to_string()),
            (view, owned) => prop_assert!(false, "view {view:?}, owned {owned:?} for {bytes:?}"),
        }
        Ok(())
    }

    fn arbitrary_event() -> impl Strategy<Value = ActivityEvent> {
        (
            (".{0,12}", ".{0,12}", "[a-z_]{0,12}"),
            (any::<i64>(), any::<i32>(), any::<f64>()),
            proptest::option::of(".{0,20}"),
            proptest::collection::btree_map(".{0,6}", ".{0,6}", 0..4),
        )
            .prop_map(
                |((event_id, user_id, event_type), (ts, session, amount), timezone, attributes)| {
                    ActivityEvent {
                        event_id,
                        user_id,
                        event_type,
                        timestamp_ms: ts,
                        session_seconds: session,
                        amount,
                        timezone,
                        attributes,
                    }
                },
            )
    }

    #[test]
    fn decoders_agree_on_edge_values() {
        let mut e = event("");
        e.timestamp_ms = i64::MIN;
        e.session_seconds = i32::MIN;
        e.amount = f64::NAN;
        e.timezone = None;
        e.attributes.clear();
        for framing in [None, Some(0), Some(u32::MAX)] {
            let bytes = encode_event(&e, framing).expect("encodes");
            assert_decoders_agree(&bytes).expect("agree");
            let decoded = decoder().decode(&bytes).expect("decodes");
            assert!(same_event(&decoded, &e));
        }
        // A map written in one block with a negative count and its byte size, as the
        // specification allows: [count -1, size 4, key "k", value "v", end].
        let mut datum = encode_event(&e, None).expect("encodes");
        datum.pop();
        datum.extend_from_slice(&[0x01, 0x08, 0x02, b'k', 0x02, b'v', 0x00]);
        assert_decoders_agree(&datum).expect("agree");
        let decoded = decoder().decode(&datum).expect("decodes");
        assert_eq!(decoded.attributes.get("k").map(String::as_str), Some("v"));
    }

    proptest! {
        #[test]
        fn decoders_agree_on_valid_events(e in arbitrary_event(), framed in any::<bool>()) {
            let bytes = encode_event(&e, framed.then_some(1)).expect("encodes");
            // A plain datum with an empty event_id starts with the frame's magic byte: if
            // its next bytes also decode as a framed event, that is what it reads as (see
            // the module's note). Both decoders must still agree on it.
            if framed || !e.event_id.is_empty() {
                let decoded = decoder().decode(&bytes).expect("decodes");
                prop_assert!(same_event(&decoded, &e), "{decoded:?} != {e:?}");
            }
            assert_decoders_agree(&bytes)?;
        }

        #[test]
        fn decoders_agree_on_corrupted_events(
            e in arbitrary_event(),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            cut in proptest::option::of(any::<usize>()),
            tail in proptest::collection::vec(any::<u8>(), 0..3),
        ) {
            let mut bytes = encode_event(&e, Some(1)).expect("encodes");
            for (pos, byte) in edits {
                let pos = pos % bytes.len();
                bytes[pos] = byte;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut % (bytes.len() + 1));
            }
            bytes.extend_from_slice(&tail);
            assert_decoders_agree(&bytes)?;
        }

        #[test]
        fn decoders_agree_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            assert_decoders_agree(&bytes)?;
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decoder().decode(&bytes);
        }

        #[test]
        fn corrupting_a_valid_record_never_panics(pos in 0usize..64, byte in any::<u8>()) {
            let mut bytes = encode_event(&event("abc"), Some(3)).expect("encodes");
            let pos = pos % bytes.len();
            bytes[pos] = byte;
            let _ = decoder().decode(&bytes);
        }
    }
}
