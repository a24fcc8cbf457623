use thiserror::Error;

#[derive(Debug, Error)]
pub enum StateError {
    #[error("RocksDB: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("column family {0} is missing")]
    MissingColumnFamily(&'static str),
    #[error("corrupt {what} value for partition {partition}: {reason}")]
    Corrupt {
        what: &'static str,
        partition: u32,
        reason: String,
    },
    #[error("state directory was written by format {found}, this build reads format {expected}")]
    FormatVersion { found: u32, expected: u32 },
    #[error("cannot encode {what}: {reason}")]
    Encode { what: &'static str, reason: String },
}

/// A partition-wide value in the state's binary layout (postcard; profiles have their own,
/// [`decode_profile`]); `what` names it in the error.
pub(crate) fn encode<T: serde::Serialize + ?Sized>(
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, StateError> {
    postcard::to_allocvec(value).map_err(|e| StateError::Encode {
        what,
        reason: e.to_string(),
    })
}

/// A value of `partition` in the state's binary layout; `what` names it in the error.
pub(crate) fn decode<'a, T: serde::Deserialize<'a>>(
    what: &'static str,
    partition: u32,
    bytes: &'a [u8],
) -> Result<T, StateError> {
    postcard::from_bytes(bytes).map_err(|e| StateError::Corrupt {
        what,
        partition,
        reason: e.to_string(),
    })
}

/// A stored profile of `partition` ([`rekindle_rules::decode_profile`]); `what` names it.
pub(crate) fn decode_profile(
    what: &'static str,
    partition: u32,
    bytes: &[u8],
) -> Result<rekindle_rules::UserProfile, StateError> {
    rekindle_rules::decode_profile(bytes).map_err(|e| StateError::Corrupt {
        what,
        partition,
        reason: e.to_string(),
    })
}
