//! The processing loop that `rekindle run` and `rekindle replay` share.
//!
//! Records of one partition are processed strictly in log order. For each record:
//!
//! 1. A record below the partition's stored next offset is skipped: state already has it.
//! 2. The partition clock advances to the record's time (an event's time, clamped against
//!    its ingest time, or a tick's time); it never goes back.
//! 3. Every timer due at or before the clock fires, before the record itself is applied, so
//!    an event that arrives after a deadline does not cancel a lapse that already happened.
//! 4. The event is applied to its user's profile, the rule book evaluates the user at the
//!    clock, and the user's single timer is moved to the next time the book asks for.
//!
//! After each record no pending timer is due at or before the clock. Because the outcome
//! depends only on the records and their order, a replay of the same log gives the same
//! triggers and audit records as the live run. [`Engine::commit`] writes every partition's batch atomically.

mod counters;
mod engine;
mod error;
mod output;
mod record;

pub use engine::{Disposition, Engine, EngineConfig, EngineStats};
pub use error::EngineError;
pub use output::Emitted;
pub use record::{Record, RecordKind};

#[cfg(test)]
mod tests;
