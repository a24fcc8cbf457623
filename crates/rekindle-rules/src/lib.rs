//! Rules and delivery policies as pure functions.
//!
//! Nothing here does IO, reads a clock or spawns a task: every function is given the user's
//! [`UserProfile`], the event or the time ("now", from the pipeline clock) and its
//! configuration, and returns what changed. This is what makes a replay of the same log give
//! the same triggers and decisions as the live run, and what makes the arithmetic easy to
//! property-test.
//!
//! [`RuleBook`] is the entry point: rules ([`RuleKind`]) propose triggers, the lifecycle
//! gives every user a stage, and the policies (cooldown, frequency cap, priority, quiet
//! hours, holdout, opt-out) decide what goes out; every decision carries its explanation.

mod book;
mod config;
mod decision;
mod engagement_drop;
mod error;
mod experiment;
mod growth;
mod new_user;
mod policy;
mod profile;
mod profile_codec;
mod rule;
mod segment;
mod silence;
mod stage;
mod trigger_id;
mod varint;
mod wake;
mod window;

#[cfg(test)]
mod tests;

pub use book::{Activity, RuleBook};
pub use config::{
    AttributionConfig, FrequencyCapConfig, HoldoutConfig, LifecycleConfig, PolicyConfig,
    QuietHoursConfig, RuleBookConfig, RuleConfig, RuleKind, RuleMode,
};
pub use decision::{
    Decision, ExperimentCount, Outcome, Reactivation, Reason, SegmentChange, Verdict,
};
pub use error::RulesError;
pub use experiment::{lift, Arm, ArmConfig, Experiment, Lift};
pub use growth::{
    day_label, ActiveDays, ArmCounts, CohortCounts, Counted, DayCounts, Growth, GrowthConfig,
    GrowthFigures, LATE_DAYS, RETENTION_DAYS,
};
pub use policy::{time_zone, Holdout, QuietHours};
pub use profile::{
    Attribution, Bucket, BucketSums, DecisionNote, Deferred, Group, RuleKey, RuleMemory,
    StageMemory, UserProfile, RECENT_DECISIONS,
};
pub use profile_codec::{decode_profile, encode_profile, ENCODED_PROFILE_BYTES};
pub use rule::Rule;
pub use segment::{Scores, SegmentConfig, SegmentRuleConfig, Segments, MAX_SEGMENTS};
pub use stage::{Lifecycle, LifecycleStage, StageChange};
pub use trigger_id::trigger_id;
pub use wake::{CountStep, CountedAs, Steps, Wake, COUNT_STEPS};
pub use window::{WindowConfig, Windows};

/// Milliseconds in a UTC calendar day.
pub const DAY_MS: i64 = 86_400_000;
