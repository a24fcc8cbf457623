//! The changelog: every committed change to a partition's state as Kafka records, so that a
//! worker without the partition's disk can rebuild it.
//!
//! One changelog partition per activity partition, compacted by key:
//!
//! | key                | value                                              |
//! |--------------------|----------------------------------------------------|
//! | `u` + user id      | version byte + the profile (`rekindle_rules::encode_profile`, with its applied offset); none: deleted |
//! | `g`                | version byte + the growth figures (postcard) |
//! | `m`                | version byte + next offset and clock (postcard) |
//!
//! A batch writes its profile records first and its meta record last. Compaction keeps the
//! latest value of each key, so the log always holds every live profile and the latest meta.

use rekindle_rules::{GrowthFigures, UserProfile};
use serde::{Deserialize, Serialize};

use crate::error::encode;
use crate::StateError;

/// Bumped with the profile layout (the state's format version follows it).
pub const CHANGELOG_VERSION: u8 = 7;
const USER_PREFIX: u8 = b'u';
const META_KEY: &[u8] = b"m";
const GROWTH_KEY: &[u8] = b"g";

/// One record for the changelog partition of the state's partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangelogRecord {
    pub key: Vec<u8>,
    /// `None` is a tombstone: the user was deleted.
    pub value: Option<Vec<u8>>,
}

/// The position part of a partition's state, as the changelog carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangelogMeta {
    pub next_offset: i64,
    pub clock_ms: i64,
}

/// A changelog record, read back.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangelogEntry {
    Profile {
        user_id: String,
        profile: Option<Box<UserProfile>>,
    },
    Meta(ChangelogMeta),
    Growth(Box<GrowthFigures>),
}

pub(crate) fn profile_record(user_id: &str, encoded: &[u8]) -> ChangelogRecord {
    let mut key = Vec::with_capacity(1 + user_id.len());
    key.push(USER_PREFIX);
    key.extend_from_slice(user_id.as_bytes());
    let mut value = Vec::with_capacity(1 + encoded.len());
    value.push(CHANGELOG_VERSION);
    value.extend_from_slice(encoded);
    ChangelogRecord {
        key,
        value: Some(value),
    }
}

pub(crate) fn tombstone(user_id: &str) -> ChangelogRecord {
    let mut key = Vec::with_capacity(1 + user_id.len());
    key.push(USER_PREFIX);
    key.extend_from_slice(user_id.as_bytes());
    ChangelogRecord { key, value: None }
}

/// A partition-wide record (no user key): the version byte, then the encoded value.
fn partition_record<T: Serialize>(
    key: &[u8],
    what: &'static str,
    value: &T,
) -> Result<ChangelogRecord, StateError> {
    let mut bytes = vec![CHANGELOG_VERSION];
    bytes.extend_from_slice(&encode(what, value)?);
    Ok(ChangelogRecord {
        key: key.to_vec(),
        value: Some(bytes),
    })
}

pub(crate) fn growth_record(figures: &GrowthFigures) -> Result<ChangelogRecord, StateError> {
    partition_record(GROWTH_KEY, "changelog growth figures", figures)
}

pub(crate) fn meta_record(meta: ChangelogMeta) -> Result<ChangelogRecord, StateError> {
    partition_record(META_KEY, "changelog meta", &meta)
}

/// Decodes one changelog record of `partition` (named in errors).
pub fn decode_entry(
    partition: u32,
    key: &[u8],
    value: Option<&[u8]>,
) -> Result<ChangelogEntry, StateError> {
    let corrupt = |reason: String| StateError::Corrupt {
        what: "changelog record",
        partition,
        reason,
    };
    let body = match value {
        None => None,
        Some(bytes) => match bytes.split_first() {
            Some((&CHANGELOG_VERSION, body)) => Some(body),
            Some((version, _)) => {
                return Err(corrupt(format!(
                    "changelog version {version}, this build reads {CHANGELOG_VERSION}"
                )))
            }
            None => return Err(corrupt("empty value".into())),
        },
    };
    if key == META_KEY {
        let body = body.ok_or_else(|| corrupt("meta record without a value".into()))?;
        let meta = postcard::from_bytes(body).map_err(|e| corrupt(e.to_string()))?;
        return Ok(ChangelogEntry::Meta(meta));
    }
    if key == GROWTH_KEY {
        let body = body.ok_or_else(|| corrupt("growth record without a value".into()))?;
        let figures = postcard::from_bytes(body).map_err(|e| corrupt(e.to_string()))?;
        return Ok(ChangelogEntry::Growth(Box::new(figures)));
    }
    match key.split_first() {
        Some((&USER_PREFIX, user)) => {
            let user_id = std::str::from_utf8(user)
                .map_err(|e| corrupt(format!("user id: {e}")))?
                .to_string();
            let profile = body
                .map(|b| rekindle_rules::decode_profile(b).map(Box::new))
                .transpose()
                .map_err(|e| corrupt(e.to_string()))?;
            Ok(ChangelogEntry::Profile { user_id, profile })
        }
        _ => Err(corrupt(format!("unknown key {key:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let profile = UserProfile {
            last_active_ms: 7,
            applied_offset: Some(3),
            ..UserProfile::default()
        };
        let mut encoded = Vec::new();
        rekindle_rules::encode_profile(&profile, &mut encoded).expect("encode");
        let r = profile_record("ann", &encoded);
        assert_eq!(
            decode_entry(0, &r.key, r.value.as_deref()).expect("decode"),
            ChangelogEntry::Profile {
                user_id: "ann".into(),
                profile: Some(Box::new(profile))
            }
        );
        let t = tombstone("ann");
        assert_eq!(
            decode_entry(0, &t.key, None).expect("decode"),
            ChangelogEntry::Profile {
                user_id: "ann".into(),
                profile: None
            }
        );
        let meta = ChangelogMeta {
            next_offset: 10,
            clock_ms: 99,
        };
        let m = meta_record(meta).expect("meta");
        assert_eq!(
            decode_entry(0, &m.key, m.value.as_deref()).expect("decode"),
            ChangelogEntry::Meta(meta)
        );
        let mut figures = GrowthFigures::default();
        let growth = rekindle_rules::Growth::new(&rekindle_rules::GrowthConfig::default())
            .expect("valid")
            .expect("enabled");
        growth.record(&mut None, 5, 5, &mut figures);
        let g = growth_record(&figures).expect("growth");
        assert_eq!(
            decode_entry(0, &g.key, g.value.as_deref()).expect("decode"),
            ChangelogEntry::Growth(Box::new(figures))
        );
    }

    #[test]
    fn foreign_and_damaged_records_are_errors() {
        assert!(decode_entry(0, b"x1", Some(&[CHANGELOG_VERSION])).is_err());
        assert!(decode_entry(0, b"m", None).is_err());
        assert!(decode_entry(0, b"uann", Some(&[CHANGELOG_VERSION + 1, 0])).is_err());
        assert!(decode_entry(0, b"uann", Some(&[])).is_err());
        assert!(decode_entry(0, b"uann", Some(&[CHANGELOG_VERSION, 0xff, 0xff])).is_err());
    }
}
