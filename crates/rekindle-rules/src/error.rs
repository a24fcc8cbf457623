use thiserror::Error;

/// A rule or window configuration that cannot work (the message names the offending key),
/// or a stored timer entry or profile that cannot be read.
#[derive(Debug, Error, PartialEq)]
pub enum RulesError {
    #[error("{key}: {reason}")]
    InvalidConfig { key: String, reason: String },
    /// A stored timer entry's value cannot be read.
    #[error("timer entry: {0}")]
    TimerEntry(&'static str),
    /// A stored profile cannot be read.
    #[error("stored profile: {0}")]
    Profile(&'static str),
}

pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> RulesError {
    RulesError::InvalidConfig {
        key: key.into(),
        reason: reason.into(),
    }
}
