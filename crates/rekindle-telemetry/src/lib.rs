//! Metrics and logging set-up shared by every rekindle command.

mod error;
mod logging;
mod metrics;

pub use error::TelemetryError;
pub use logging::{init_logging, LogFormat};
pub use metrics::Metrics;
