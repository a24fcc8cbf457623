//! Lapse detection as pure functions.
//!
//! Nothing here does IO, reads a clock or spawns a task: every function is given the user's
//! [`UserProfile`], the event or the time ("now", from the pipeline clock) and its
//! configuration, and returns what changed. This is what makes a replay of the same log give
//! the same triggers as the live run, and what makes the arithmetic easy to property-test.

mod error;
mod lapsed;
mod profile;
mod stage;
mod trigger_id;
mod window;

pub use error::RulesError;
pub use lapsed::{LapsedConfig, LapsedRule};
pub use profile::{Bucket, LapseEpisode, UserProfile};
pub use stage::LifecycleStage;
pub use trigger_id::trigger_id;
pub use window::{WindowConfig, Windows};

/// Milliseconds in a UTC calendar day.
pub const DAY_MS: i64 = 86_400_000;
