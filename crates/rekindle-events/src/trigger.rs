use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Written into every trigger so consumers can tell which schema generation produced it.
pub const TRIGGER_SCHEMA_VERSION: i32 = 4;

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
    /// Hash of the configuration of the rule that fired: which version of a rule decided.
    #[serde(default)]
    pub rule_config_hash: String,
    /// The user's RFM segment when the rule fired; empty when segments are off.
    #[serde(default)]
    pub segment: String,
    /// The arm of the rule's experiment (what to send); empty when it runs none.
    #[serde(default)]
    pub arm: String,
}

/// A decision that did not (or not yet) send a trigger, as described by
/// `schemas/audit_record.avsc`: the trigger the rule fired, with the same explanation, and
/// what the delivery policies made of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub trigger: ReactivationTrigger,
    /// `suppressed`, `deferred` or `cancelled`.
    pub decision: String,
    /// `shadow`, `opted_out`, `cooldown`, `capped`, `outranked`, `quiet_hours`, `holdout`,
    /// `returned` or `user_deleted`.
    pub reason: String,
    /// For `deferred`: when the trigger is due to go out.
    pub release_at_ms: Option<i64>,
    /// `treatment` or `holdout`.
    pub group: String,
}
