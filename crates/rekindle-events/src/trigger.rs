use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Written into every trigger so consumers can tell which schema generation produced it.
pub const TRIGGER_SCHEMA_VERSION: i32 = 1;

/// A decision that a user lapsed, as described by `schemas/reactivation_trigger.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReactivationTrigger {
    pub trigger_id: String,
    pub user_id: String,
    pub rule_id: String,
    pub fired_at_ms: i64,
    pub due_at_ms: i64,
    pub last_active_ms: i64,
    pub lifecycle_stage: String,
    /// Ordered so that the JSON printed by `replay` is byte-for-byte reproducible.
    pub features: BTreeMap<String, f64>,
    pub schema_version: i32,
}
