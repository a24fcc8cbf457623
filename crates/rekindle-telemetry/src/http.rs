use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::{Health, Metrics, TelemetryError};

#[derive(Clone)]
struct Endpoints {
    metrics: Metrics,
    health: Arc<Health>,
}

/// Binds the listener now, so a taken port fails start-up rather than a background task.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, TelemetryError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| TelemetryError::Bind {
            addr,
            reason: e.to_string(),
        })
}

/// Serves `/metrics`, `/health/livez` and `/health/readyz` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    health: Arc<Health>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), TelemetryError> {
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/health/livez", get(|| async { "ok\n" }))
        .route("/health/readyz", get(readyz))
        .with_state(Endpoints { metrics, health });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            while !*shutdown.borrow() {
                if shutdown.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .map_err(|e| TelemetryError::Serve(e.to_string()))
}

async fn render_metrics(State(endpoints): State<Endpoints>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        endpoints.metrics.render(),
    )
}

async fn readyz(State(endpoints): State<Endpoints>) -> impl IntoResponse {
    match endpoints.health.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}
