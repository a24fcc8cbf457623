//! Records that cross rekindle's boundaries and their encodings.
//!
//! * [`ActivityEvent`]: what product apps emit, read from the activity topic (Avro) or from
//!   replay files (JSON lines).
//! * [`ReactivationTrigger`]: what rekindle emits to the delivery topic (Avro).
//! * [`AuditRecord`]: a trigger that did not go out, with the reason (the audit topic).
//!
//! The Avro schemas are the `.avsc` files in the repository's `schemas/` folder, embedded
//! at compile time so the binary and the documents can never disagree.

mod activity;
mod codec;
mod container;
mod error;
mod replay_line;
mod trigger;

pub use activity::{ActivityEvent, ActivityView, EventKind};
pub use codec::{
    encode_event, AuditDecoder, AuditEncoder, EventDecoder, TriggerDecoder, TriggerEncoder,
    ACTIVITY_SCHEMA_JSON, AUDIT_SCHEMA_JSON, TRIGGER_SCHEMA_JSON,
};
pub use container::ContainerWriter;
pub use error::EventError;
pub use replay_line::ReplayLine;
pub use trigger::{AuditRecord, ReactivationTrigger, TRIGGER_SCHEMA_VERSION};
