use thiserror::Error;

#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    State(#[from] rekindle_state::StateError),
    #[error(transparent)]
    Codec(#[from] rekindle_events::EventError),
    #[error(transparent)]
    Rules(#[from] rekindle_rules::RulesError),
}
