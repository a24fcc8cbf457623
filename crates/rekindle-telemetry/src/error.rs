use thiserror::Error;

#[derive(Debug, Error)]
pub enum TelemetryError {
    #[error("metric registration: {0}")]
    Prometheus(#[from] prometheus::Error),
    #[error("invalid log filter {filter:?}: {reason}")]
    LogFilter { filter: String, reason: String },
    #[error("cannot listen on {addr}: {reason}")]
    Bind {
        addr: std::net::SocketAddr,
        reason: String,
    },
    #[error("HTTP server: {0}")]
    Serve(String),
    #[error("logging already initialised")]
    AlreadyInitialised,
}
