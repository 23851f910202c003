//! The operations endpoint: `/healthz` (the process is alive), `/readyz` (migrated and
//! polling) and `/metrics` (Prometheus text).
//!
//! It must never expose configuration, credentials or attendee data.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// Shared between the daemon (which flips `ready`) and the endpoint.
#[derive(Clone)]
pub struct Ops {
    ready: Arc<AtomicBool>,
    metrics: Option<PrometheusHandle>,
}

impl Ops {
    /// Installs the global Prometheus recorder (once per process; later calls reuse none and
    /// serve an empty `/metrics`).
    pub fn install() -> Self {
        let metrics = PrometheusBuilder::new()
            .set_buckets(&[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
            .ok()
            .and_then(|b| b.install_recorder().ok());
        Self {
            ready: Arc::new(AtomicBool::new(false)),
            metrics,
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Runs `upkeep` on the recorder (histogram maintenance); call periodically.
    pub fn upkeep(&self) {
        if let Some(m) = &self.metrics {
            m.run_upkeep();
        }
    }
}

/// The router, exposed for tests.
pub fn router(ops: Ops) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(ops): State<Ops>| async move {
                if ops.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(ops): State<Ops>| async move {
                ops.metrics
                    .as_ref()
                    .map(PrometheusHandle::render)
                    .unwrap_or_default()
            }),
        )
        .with_state(ops)
}

/// Binds `listen` and serves until `cancel` fires. Returns the bound address (a port of 0
/// resolved) and the serving task.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(
    listen: SocketAddr,
    ops: Ops,
    cancel: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tracing::info!(address = %addr, "operations endpoint listening");
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, router(ops))
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "operations endpoint stopped");
        }
    });
    Ok((addr, task))
}
