//! `/metrics`, `/healthz` and `/readyz` on the metrics address.

use std::sync::Arc;

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};
use tracing::error;

use super::SharedAgent;
use crate::{kernel::Dataplane, metrics::Metrics};

struct AppState<D: Dataplane> {
    metrics: Arc<Metrics>,
    agent: SharedAgent<D>,
}

impl<D: Dataplane> Clone for AppState<D> {
    fn clone(&self) -> Self {
        Self {
            metrics: self.metrics.clone(),
            agent: self.agent.clone(),
        }
    }
}

/// Serves until the listener fails.
pub async fn serve<D: Dataplane + Send + 'static>(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    agent: SharedAgent<D>,
) {
    let app = Router::new()
        .route("/metrics", get(metrics_handler::<D>))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler::<D>))
        .with_state(AppState { metrics, agent });
    if let Err(e) = axum::serve(listener, app).await {
        error!(error = %e, "metrics server stopped");
    }
}

async fn metrics_handler<D: Dataplane + Send + 'static>(
    State(state): State<AppState<D>>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let openmetrics = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    // Reading per-CPU maps is a handful of syscalls: fine on a worker thread.
    let metrics = state.metrics.clone();
    let encoded = tokio::task::spawn_blocking(move || {
        if openmetrics {
            metrics.encode()
        } else {
            metrics.encode_classic()
        }
    })
    .await;
    let content_type = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    match encoded {
        Ok(Ok(body)) => (
            StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, content_type)],
            body,
        )
            .into_response(),
        _ => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn ready_handler<D: Dataplane + Send + 'static>(
    State(state): State<AppState<D>>,
) -> impl IntoResponse {
    let ready = state.agent.lock().map(|a| a.ready).unwrap_or(false);
    if ready {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: first reconcile has not succeeded\n",
        )
    }
}
