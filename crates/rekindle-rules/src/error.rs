use thiserror::Error;

/// A rule or window configuration that cannot work. The message names the offending key.
#[derive(Debug, Error, PartialEq)]
pub enum RulesError {
    #[error("{key}: {reason}")]
    InvalidConfig { key: String, reason: String },
}

pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> RulesError {
    RulesError::InvalidConfig {
        key: key.into(),
        reason: reason.into(),
    }
}
