//! Everything rekindle says to Kafka. No other crate depends on `rdkafka`.
//!
//! * [`Source`]: the activity topic, read in a consumer group, in batches; partitions start
//!   at the offsets the state store holds (state is the source of truth).
//! * [`Sink`]: an idempotent (optionally transactional) producer for triggers and the
//!   changelog, whose batches are awaited until the broker acknowledges every record.
//! * [`ClockTicker`]: appends clock-tick records to the partitions this worker owns, so that
//!   deadlines pass on idle partitions and the ticks are part of the log a replay reads.
//! * [`ChangelogReader`]: reads a partition's changelog back for a restore.
//! * [`admin`]: topic creation for the demo and tests.

pub mod admin;
mod changelog;
mod client;
mod error;
mod sink;
mod source;
mod tick;

pub use changelog::{ChangelogRead, ChangelogReader};
pub use client::KafkaSettings;
pub use error::KafkaError;
pub use rdkafka::message::{BorrowedMessage, Message};
pub use sink::{Deliveries, Outgoing, Producer, Sink, SinkContext};
pub use source::{
    source_record, Assignment, NoObserver, ResumeLookup, Source, SourceObserver, SourceRecord,
};
pub use tick::{tick_time, ClockTicker, TICK_HEADER};
