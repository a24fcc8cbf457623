use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::EventError;

/// One thing a user did, as described by `schemas/activity_event.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivityEvent {
    pub event_id: String,
    pub user_id: String,
    pub event_type: String,
    /// Event time, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    #[serde(default)]
    pub session_seconds: i32,
    #[serde(default)]
    pub amount: f64,
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// How the pipeline treats an event type. Unknown product event types count as activity,
/// so teams need not enumerate their event vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Activity,
    OptOut,
    OptIn,
    UserDeleted,
}

/// The longest user id accepted: ids are keys in state and on topics.
const MAX_USER_ID_BYTES: usize = 256;
/// 2000-01-01T00:00:00Z. Earlier event times are taken for unit mistakes (seconds, zero).
const MIN_TIMESTAMP_MS: i64 = 946_684_800_000;
/// 2100-01-01T00:00:00Z. Later ones are taken for unit mistakes (microseconds).
const MAX_TIMESTAMP_MS: i64 = 4_102_444_800_000;

/// An [`ActivityEvent`] as the engine reads it: its strings borrowed from the record it was
/// decoded from and its attributes (which no rule reads) read past, so that decoding
/// allocates nothing per event.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct ActivityView<'a> {
    pub event_id: &'a str,
    pub user_id: &'a str,
    pub event_type: &'a str,
    /// Event time, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    #[serde(default)]
    pub session_seconds: i32,
    #[serde(default)]
    pub amount: f64,
    #[serde(default, borrow)]
    pub timezone: Option<&'a str>,
    /// Read and checked as the owned event's are (so that both refuse the same bytes), and
    /// not kept.
    #[serde(default)]
    attributes: SkippedAttributes,
}

/// A map of strings read entry by entry and dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct SkippedAttributes;

impl<'de> Deserialize<'de> for SkippedAttributes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = SkippedAttributes;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Self::Value, M::Error> {
                while map.next_entry::<&'de str, &'de str>()?.is_some() {}
                Ok(SkippedAttributes)
            }
        }
        deserializer.deserialize_map(Entries)
    }
}

impl ActivityEvent {
    pub fn view(&self) -> ActivityView<'_> {
        ActivityView {
            event_id: &self.event_id,
            user_id: &self.user_id,
            event_type: &self.event_type,
            timestamp_ms: self.timestamp_ms,
            session_seconds: self.session_seconds,
            amount: self.amount,
            timezone: self.timezone.as_deref(),
            attributes: SkippedAttributes,
        }
    }

    pub fn kind(&self) -> EventKind {
        self.view().kind()
    }

    /// Rejects events no rule could use. Checked after decoding, before any state is touched.
    pub fn validate(&self) -> Result<(), EventError> {
        self.view().validate()
    }
}

impl ActivityView<'_> {
    pub fn kind(&self) -> EventKind {
        match self.event_type {
            "opt_out" => EventKind::OptOut,
            "opt_in" => EventKind::OptIn,
            "user_deleted" => EventKind::UserDeleted,
            _ => EventKind::Activity,
        }
    }

    /// See [`ActivityEvent::validate`].
    pub fn validate(&self) -> Result<(), EventError> {
        if self.user_id.is_empty() {
            return Err(EventError::Invalid("missing user_id"));
        }
        if self.user_id.len() > MAX_USER_ID_BYTES {
            return Err(EventError::Invalid("user_id longer than 256 bytes"));
        }
        if !(MIN_TIMESTAMP_MS..MAX_TIMESTAMP_MS).contains(&self.timestamp_ms) {
            return Err(EventError::Invalid(
                "timestamp_ms is not between 2000 and 2100",
            ));
        }
        if self.session_seconds < 0 {
            return Err(EventError::Invalid("negative session_seconds"));
        }
        if !self.amount.is_finite() {
            return Err(EventError::Invalid("amount is not a finite number"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> ActivityEvent {
        ActivityEvent {
            event_id: "e1".into(),
            user_id: "u1".into(),
            event_type: "app_open".into(),
            timestamp_ms: 1_700_000_000_000,
            session_seconds: 0,
            amount: 0.0,
            timezone: None,
            attributes: BTreeMap::new(),
        }
    }

    #[test]
    fn unknown_event_types_are_activity() {
        let mut e = event();
        e.event_type = "level_completed".into();
        assert_eq!(e.kind(), EventKind::Activity);
        e.event_type = "opt_out".into();
        assert_eq!(e.kind(), EventKind::OptOut);
    }

    #[test]
    fn validation_rejects_what_rules_cannot_use() {
        assert!(event().validate().is_ok());
        let mut e = event();
        e.user_id.clear();
        assert_eq!(
            e.validate().map_err(|e| e.to_string()),
            Err("invalid event: missing user_id".into())
        );
        for absurd in [0, 1_700_000_000, 1_700_000_000_000_000] {
            let mut e = event();
            e.timestamp_ms = absurd;
            assert!(e.validate().is_err(), "{absurd}");
        }
        let mut e = event();
        e.amount = f64::NAN;
        assert!(e.validate().is_err());
        let mut e = event();
        e.session_seconds = -1;
        assert!(e.validate().is_err());
    }
}
