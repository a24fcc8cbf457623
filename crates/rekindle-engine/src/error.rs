use thiserror::Error;

#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    State(#[from] rekindle_state::StateError),
    #[error(transparent)]
    Codec(#[from] rekindle_events::EventError),
    #[error(transparent)]
    Rules(#[from] rekindle_rules::RulesError),
    /// Day numbers in stored figures are days of the zone they were counted in; mixing
    /// zones would make every figure wrong without a sign.
    #[error("partition {partition}: growth figures were counted in {stored:?}, analytics.timezone is {configured:?}; keep the zone or start from empty state")]
    GrowthZone {
        partition: u32,
        stored: String,
        configured: String,
    },
}
