//! Metrics and logging set-up shared by every rekindle command.

mod error;
mod health;
mod http;
mod logging;
mod metrics;

pub use error::TelemetryError;
pub use health::Health;
pub use http::{bind, serve};
pub use logging::{init_logging, LogFormat};
pub use metrics::{Metrics, PartitionSeries, Phase, StageTransitions};
