use tracing_subscriber::EnvFilter;

use crate::TelemetryError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Logs go to standard error, so standard output stays free for data (`replay`, `tail`).
/// `RUST_LOG`, when set, overrides the configured level.
pub fn init_logging(format: LogFormat, level: &str) -> Result<(), TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => {
            EnvFilter::try_new(&env).map_err(|e| TelemetryError::LogFilter {
                filter: env.clone(),
                reason: e.to_string(),
            })?
        }
        _ => EnvFilter::try_new(level).map_err(|e| TelemetryError::LogFilter {
            filter: level.to_string(),
            reason: e.to_string(),
        })?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    result.map_err(|_| TelemetryError::AlreadyInitialised)
}
