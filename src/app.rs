//! Wires the roles into one HTTP server: opens the backends the configuration names, mounts
//! the routes of each role asked for next to `/health/*` and `/metrics`, runs the projector
//! if asked, and drains everything on shutdown.

use std::sync::Arc;

use agora_eventlog::{EventLog, KafkaLog, SqliteLog};
use agora_ingest::{IngestMetrics, IngestState, Pseudonymizer};
use agora_projector::{Projector, ProjectorMetrics};
use agora_query::{QueryMetrics, QueryState};
use agora_schemas::api::error_body;
use agora_store::{ClickHouseStore, SqliteStore, Store};
use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use prometheus::{Encoder, Registry, TextEncoder};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::{Config, LogBackend, StoreBackend};

/// Which roles a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub ingest: bool,
    pub project: bool,
    pub query: bool,
}

impl Roles {
    pub const ALL: Roles = Roles { ingest: true, project: true, query: true };
    pub const INGEST: Roles = Roles { ingest: true, project: false, query: false };
    pub const PROJECT: Roles = Roles { ingest: false, project: true, query: false };
    pub const QUERY: Roles = Roles { ingest: false, project: false, query: true };

    fn names(self) -> Vec<&'static str> {
        [(self.ingest, "ingest"), (self.project, "project"), (self.query, "query")]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect()
    }
}

/// The backends a process has opened.
#[derive(Clone)]
pub struct Backends {
    pub log: EventLog,
    pub store: Store,
}

/// Opens the event log and the projection store the configuration names.
pub async fn open_backends(config: &Config) -> anyhow::Result<Backends> {
    let log = match &config.log_backend {
        LogBackend::Embedded => EventLog::Sqlite(SqliteLog::open(&config.data_dir)?),
        LogBackend::Kafka(settings) => EventLog::Kafka(KafkaLog::open(settings.clone()).await?),
    };
    let store = open_store(config).await?;
    Ok(Backends { log, store })
}

/// Opens the projection store the configuration names, creating and migrating its tables
/// when needed.
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    Ok(match &config.store_backend {
        StoreBackend::Embedded => Store::Sqlite(SqliteStore::open(&config.data_dir)?),
        StoreBackend::ClickHouse(settings) => Store::ClickHouse(
            ClickHouseStore::open(settings).await.with_context(|| format!("failed to open the clickhouse store at {}", settings.url))?,
        ),
    })
}

struct Health {
    backends: Backends,
    registry: Registry,
}

/// Runs `roles` on `listener` until `shutdown` is cancelled, then drains: the server stops
/// taking requests and finishes those in flight, the projector commits or abandons its
/// batch, all within the configured grace period.
pub async fn run(
    config: Config,
    roles: Roles,
    backends: Backends,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let registry = Registry::new();
    let mut app = Router::new();
    if roles.ingest {
        let key = config.require_pseudonym_key()?;
        let state = IngestState {
            log: backends.log.clone(),
            pseudonymizer: Pseudonymizer::new(key.as_bytes()),
            tokens: config.ingest_tokens.clone(),
            metrics: IngestMetrics::register(&registry)?,
        };
        app = app.merge(agora_ingest::router(Arc::new(state)));
    }
    if roles.query {
        let state = QueryState::new(
            backends.store.clone(),
            backends.log.clone(),
            config.read_tokens.clone(),
            config.public_read,
            config.targets.clone(),
            QueryMetrics::register(&registry)?,
        );
        app = app.merge(agora_query::router(Arc::new(state)));
    }
    let projector = if roles.project {
        let projector =
            Projector::new(backends.log.clone(), backends.store.clone(), config.projector.clone(), ProjectorMetrics::register(&registry)?);
        let token = shutdown.clone();
        Some(tokio::spawn(async move { projector.run(token).await }))
    } else {
        None
    };
    let health = Arc::new(Health { backends, registry });
    let operations = Router::new()
        .route("/health/live", get(|| async { Json(json!({ "status": "live" })) }))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(health);
    let app = app.merge(operations).fallback(|| async { (StatusCode::NOT_FOUND, Json(error_body("not_found", "no such route"))) });

    let address = listener.local_addr().context("failed to read the bound address")?;
    info!(%address, roles = ?roles.names(), "agora listening");
    let drained = shutdown.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move { drained.cancelled().await });
    let grace = config.shutdown_grace;
    let served = tokio::spawn(async move { server.await });
    shutdown.cancelled().await;
    info!(grace_s = grace.as_secs(), "shutting down");
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    let mut result = Ok(());
    tokio::select! {
        outcome = served => if let Ok(Err(e)) = outcome { result = Err(anyhow::Error::from(e).context("server failed")) },
        _ = &mut deadline => error!("requests still in flight after the grace period; stopping anyway"),
    }
    if let Some(projector) = projector {
        tokio::select! {
            outcome = projector => match outcome {
                Ok(Err(e)) => result = Err(e.context("projector failed")),
                Err(e) => result = Err(anyhow::anyhow!("projector task panicked: {e}")),
                Ok(Ok(())) => {}
            },
            _ = &mut deadline => error!("projector still busy after the grace period; its batch will be read again at start"),
        }
    }
    info!("agora stopped");
    result
}

async fn ready(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let log = health.backends.log.end_positions().await.is_ok();
    let store = health.backends.store.positions().await.is_ok();
    let status = if log && store { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let word = |ok: bool| if ok { "up" } else { "down" };
    (status, Json(json!({ "status": if log && store { "ready" } else { "not_ready" }, "log": word(log), "store": word(store) })))
}

async fn metrics(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let mut body = Vec::new();
    let encoder = TextEncoder::new();
    if let Err(e) = encoder.encode(&health.registry.gather(), &mut body) {
        error!(error = %e, "failed to encode metrics");
        return (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain")], Vec::new());
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

/// Returns a token cancelled on SIGINT or SIGTERM. The handlers are installed before this
/// returns, so a signal that arrives during start-up drains instead of killing the process.
pub fn shutdown_on_signals() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("failed to install the SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("failed to install the SIGTERM handler")?;
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => info!("SIGINT received"),
            _ = terminate.recv() => info!("SIGTERM received"),
        }
        cancel.cancel();
    });
    Ok(token)
}
