//! The operations endpoint: `/healthz` (the loop is alive), `/readyz` (able to do its job)
//! and `/metrics` (Prometheus text). What the probes answer is decided in [`crate::health`];
//! a failing probe answers 503 with its reasons, one per line.
//!
//! It must never expose configuration, credentials or attendee data.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::health::Health;

/// Shared between the daemon (which records its [`Health`]) and the endpoint.
#[derive(Clone)]
pub struct Ops {
    health: Health,
    metrics: Option<PrometheusHandle>,
}

impl Ops {
    /// Installs the global Prometheus recorder (once per process; later calls reuse none and
    /// serve an empty `/metrics`).
    pub fn install(health: Health) -> Self {
        let metrics = PrometheusBuilder::new()
            .set_buckets(&[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(crate::telemetry::STALENESS.to_owned()),
                    crate::telemetry::STALENESS_BUCKETS,
                )
            })
            .ok()
            .and_then(|b| b.install_recorder().ok());
        if metrics.is_some() {
            crate::telemetry::describe_metrics();
        }
        Self { health, metrics }
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Runs `upkeep` on the recorder (histogram maintenance) and publishes the process's CPU
    /// time and memory; call periodically.
    pub fn upkeep(&self) {
        if let Some(m) = &self.metrics {
            m.run_upkeep();
            crate::telemetry::record_process();
        }
    }
}

/// The router, exposed for tests.
pub fn router(ops: Ops) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|State(ops): State<Ops>| async move {
                match ops.health.live() {
                    Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
                    Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                }
            }),
        )
        .route(
            "/readyz",
            get(|State(ops): State<Ops>| async move {
                match ops.health.ready() {
                    Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
                    Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why.join("\n") + "\n"),
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
