use serde::Deserialize;

use crate::{ActivityEvent, EventError};

/// One line of a replay file: an event, or a clock tick that advances the pipeline clock.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplayLine {
    Tick {
        tick_ms: i64,
    },
    /// `ingest_ms`, when present, plays the part of the Kafka record timestamp: the bound
    /// against which future-dated event times are clamped.
    Event {
        event: Box<ActivityEvent>,
        ingest_ms: Option<i64>,
    },
}

#[derive(Deserialize)]
struct Tick {
    tick_ms: i64,
}

#[derive(Deserialize)]
struct EventLine {
    #[serde(flatten)]
    event: ActivityEvent,
    #[serde(default)]
    ingest_ms: Option<i64>,
}

impl ReplayLine {
    /// Parses one JSON line. A line is a tick when it has `tick_ms` and no `user_id`.
    pub fn parse(line: &str) -> Result<ReplayLine, EventError> {
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| EventError::Json(e.to_string()))?;
        let is_tick = value.get("tick_ms").is_some() && value.get("user_id").is_none();
        if is_tick {
            let tick: Tick =
                serde_json::from_value(value).map_err(|e| EventError::Json(e.to_string()))?;
            return Ok(ReplayLine::Tick {
                tick_ms: tick.tick_ms,
            });
        }
        let line: EventLine =
            serde_json::from_value(value).map_err(|e| EventError::Json(e.to_string()))?;
        Ok(ReplayLine::Event {
            event: Box::new(line.event),
            ingest_ms: line.ingest_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_ticks_and_events() {
        assert_eq!(
            ReplayLine::parse(r#"{"tick_ms": 42}"#).ok(),
            Some(ReplayLine::Tick { tick_ms: 42 })
        );
        let line = r#"{"event_id":"e","user_id":"u","event_type":"app_open","timestamp_ms":5,"timezone":"Europe/Berlin","attributes":{"k":"v"}}"#;
        match ReplayLine::parse(line) {
            Ok(ReplayLine::Event { event, ingest_ms }) => {
                assert_eq!(event.user_id, "u");
                assert_eq!(event.timezone.as_deref(), Some("Europe/Berlin"));
                assert_eq!(event.attributes.get("k").map(String::as_str), Some("v"));
                assert_eq!(event.session_seconds, 0);
                assert_eq!(ingest_ms, None);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rejects_bad_lines_with_an_error_value() {
        for bad in [
            "",
            "{",
            "[]",
            r#"{"tick_ms":"soon"}"#,
            r#"{"user_id":"u"}"#,
            "null",
        ] {
            assert!(
                matches!(ReplayLine::parse(bad), Err(EventError::Json(_))),
                "{bad}"
            );
        }
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in ".{0,200}") {
            let _ = ReplayLine::parse(&s);
        }
    }
}
