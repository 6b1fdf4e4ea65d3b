//! The query role: serves the SPEC §3 indicators and targets, consultation figures, the
//! pipeline's freshness and the dashboard page, from the projection store only (the log is
//! asked for its end positions, never for events). Read tokens are scoped to all of
//! government or to one organization.

pub mod exports;
pub mod metrics;
pub mod snapshot;
pub mod targets;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use agora_eventlog::{lag, EventLog, Positions};
use agora_schemas::api::{bearer_token, constant_time_eq, error_body};
use agora_schemas::FiscalYear;
use agora_store::{ConsultationView, Figures, Store, StoreError};
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::{error, warn};

pub use metrics::QueryMetrics;
pub use snapshot::{Snapshot, SnapshotError, Snapshots};
pub use targets::{TargetDefinition, TargetKind, TargetResult};

/// Who a read token lets read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadScope {
    /// Everything.
    All,
    /// Whole-government figures and this organization's own.
    Organization(String),
}

/// A read token and its scope.
#[derive(Debug, Clone)]
pub struct ReadToken {
    pub scope: ReadScope,
    pub token: String,
}

/// What the query role needs.
pub struct QueryState {
    pub store: Store,
    pub log: EventLog,
    pub tokens: Vec<ReadToken>,
    /// Serve every `/v1/` route without a token.
    pub public_read: bool,
    pub targets: Vec<TargetDefinition>,
    pub metrics: QueryMetrics,
    cache: Mutex<IndicatorCache>,
    /// On a store that folds at read time (ClickHouse), indicators are served from figure
    /// snapshots of every scope; on SQLite, one scope is read on demand and cached until the
    /// store moves.
    snapshots: Option<Snapshots>,
}

impl QueryState {
    pub fn new(
        store: Store,
        log: EventLog,
        tokens: Vec<ReadToken>,
        public_read: bool,
        targets: Vec<TargetDefinition>,
        metrics: QueryMetrics,
    ) -> Self {
        let snapshots = matches!(store, Store::ClickHouse(_)).then(|| Snapshots::new(store.clone(), log.clone(), metrics.clone()));
        QueryState { store, log, tokens, public_read, targets, metrics, cache: Mutex::new(IndicatorCache::default()), snapshots }
    }
}

/// Documents by (kind, fiscal year, organization), valid while the store's version is the one
/// they were computed at: figures only change when the projector applies.
#[derive(Default)]
struct IndicatorCache {
    entries: HashMap<(Document, FiscalYear, Option<String>), (i64, Value)>,
}

/// The kinds of cached document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Document {
    Indicators,
    Monthly,
}

const CACHE_ENTRIES: usize = 4_096;

/// Returns the query role's routes.
pub fn router(state: Arc<QueryState>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/v1/indicators", get(indicators))
        .route("/v1/indicators/monthly", get(monthly))
        .route("/v1/exports/indicators.csv", get(export_csv))
        .route("/v1/exports/indicators.parquet", get(export_parquet))
        .route("/v1/consultations/{consultation_id}", get(consultation))
        .route("/v1/pipeline", get(pipeline))
        .route("/v1/openapi.json", get(openapi))
        .layer(middleware::from_fn_with_state(state.clone(), record_latency))
        .with_state(state)
}

/// Failures at the query boundary, each with its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("a valid read token is required: Authorization: Bearer <token>")]
    Unauthorized,
    #[error("this token may not read organization {0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the projection store is unavailable; retry later")]
    Unavailable(#[source] anyhow::Error),
    #[error("internal error")]
    Unexpected(#[from] anyhow::Error),
}

impl From<StoreError> for QueryError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(source) => QueryError::Unavailable(source),
            StoreError::Unexpected(source) => QueryError::Unexpected(source),
        }
    }
}

impl From<SnapshotError> for QueryError {
    fn from(e: SnapshotError) -> Self {
        match e {
            SnapshotError::Store(e) => e.into(),
            SnapshotError::Log(e) => QueryError::Unavailable(e.into()),
        }
    }
}

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            QueryError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            QueryError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            QueryError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            QueryError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            QueryError::Unavailable(source) => {
                warn!(error = format!("{source:#}"), "query backend unavailable");
                (StatusCode::SERVICE_UNAVAILABLE, "backend_unavailable")
            }
            QueryError::Unexpected(source) => {
                error!(error = format!("{source:#}"), "query failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        (status, Json(error_body(code, &self.to_string()))).into_response()
    }
}

async fn record_latency(State(state): State<Arc<QueryState>>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".into());
    let started = Instant::now();
    let response = next.run(request).await;
    state.metrics.request_seconds.with_label_values(&[route.as_str(), response.status().as_str()]).observe(started.elapsed().as_secs_f64());
    response
}

/// Returns the scope of the request's token; public read gives everything to a request
/// without one, but a token that is presented must be valid.
fn authorize(state: &QueryState, headers: &HeaderMap) -> Result<ReadScope, QueryError> {
    let presented = bearer_token(headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()));
    match presented {
        None if state.public_read => Ok(ReadScope::All),
        None => Err(QueryError::Unauthorized),
        Some(token) => state
            .tokens
            .iter()
            .find(|t| constant_time_eq(t.token.as_bytes(), token.as_bytes()))
            .map(|t| t.scope.clone())
            .ok_or(QueryError::Unauthorized),
    }
}

fn check_organization(scope: &ReadScope, organization_id: &str) -> Result<(), QueryError> {
    match scope {
        ReadScope::Organization(own) if own != organization_id => Err(QueryError::Forbidden(organization_id.to_owned())),
        _ => Ok(()),
    }
}

#[derive(Debug, Deserialize)]
struct IndicatorParams {
    fiscal_year: Option<String>,
    organization_id: Option<String>,
}

/// The `GET /v1/indicators` document.
#[derive(Debug, Serialize)]
pub struct IndicatorsDocument {
    pub fiscal_year: FiscalYear,
    pub organization_id: Option<String>,
    #[serde(flatten)]
    pub figures: Figures,
    pub targets: Vec<TargetResult>,
}

async fn indicators(
    State(state): State<Arc<QueryState>>,
    headers: HeaderMap,
    Query(params): Query<IndicatorParams>,
) -> Result<Json<Value>, QueryError> {
    let (fiscal_year, organization_id) = scoped_year(&state, &headers, params)?;
    Ok(Json(indicator_document(&state, fiscal_year, organization_id).await?))
}

/// `GET /v1/indicators/monthly`: the trend series of a fiscal year, month by month.
async fn monthly(
    State(state): State<Arc<QueryState>>,
    headers: HeaderMap,
    Query(params): Query<IndicatorParams>,
) -> Result<Json<Value>, QueryError> {
    let (fiscal_year, organization_id) = scoped_year(&state, &headers, params)?;
    let doc = cached(&state, Document::Monthly, fiscal_year, organization_id.clone(), || async {
        let raw = state.store.monthly_raw(fiscal_year, organization_id.as_deref()).await?;
        let months = tokio::task::spawn_blocking(move || agora_store::monthly_series(fiscal_year, raw))
            .await
            .map_err(|e| QueryError::Unexpected(e.into()))?;
        Ok(json!({ "fiscal_year": fiscal_year, "organization_id": organization_id, "months": months }))
    })
    .await?;
    Ok(Json(doc))
}

#[derive(Debug, Deserialize)]
struct ExportParams {
    from: Option<String>,
    to: Option<String>,
}

async fn export_csv(
    state: State<Arc<QueryState>>,
    headers: HeaderMap,
    params: Query<ExportParams>,
) -> Result<impl IntoResponse, QueryError> {
    export(state, headers, params, exports::Format::Csv).await
}

async fn export_parquet(
    state: State<Arc<QueryState>>,
    headers: HeaderMap,
    params: Query<ExportParams>,
) -> Result<impl IntoResponse, QueryError> {
    export(state, headers, params, exports::Format::Parquet).await
}

/// `GET /v1/exports/indicators.{csv,parquet}`: every fiscal year from `from` to `to`, for the
/// whole government and each public body the token may read.
async fn export(
    State(state): State<Arc<QueryState>>,
    headers: HeaderMap,
    Query(params): Query<ExportParams>,
    format: exports::Format,
) -> Result<impl IntoResponse, QueryError> {
    let scope = authorize(&state, &headers)?;
    let year = |label: Option<String>, name: &str| -> Result<Option<FiscalYear>, QueryError> {
        label
            .filter(|l| !l.is_empty())
            .map(|l| l.parse().map_err(|e: agora_schemas::fiscal::FiscalYearError| QueryError::BadRequest(format!("{name}: {e}"))))
            .transpose()
    };
    let (from, to) = (year(params.from, "from")?, year(params.to, "to")?);
    let documents = exports::documents(&state, &scope, from, to).await?;
    let bytes = exports::export(documents, format).await?;
    let disposition = format!("attachment; filename=\"agora-indicators.{}\"", format.extension());
    Ok(([(header::CONTENT_TYPE, format.content_type().to_owned()), (header::CONTENT_DISPOSITION, disposition)], bytes))
}

/// Reads the fiscal year and optional organization of a figures request, checking that the
/// caller's token may read that organization.
fn scoped_year(state: &QueryState, headers: &HeaderMap, params: IndicatorParams) -> Result<(FiscalYear, Option<String>), QueryError> {
    let scope = authorize(state, headers)?;
    let label = params.fiscal_year.ok_or_else(|| QueryError::BadRequest("fiscal_year is required, such as 2021-2022".into()))?;
    let fiscal_year: FiscalYear =
        label.parse().map_err(|e: agora_schemas::fiscal::FiscalYearError| QueryError::BadRequest(e.to_string()))?;
    let organization_id = params.organization_id.filter(|o| !o.is_empty());
    if let Some(org) = &organization_id {
        check_organization(&scope, org)?;
    }
    Ok((fiscal_year, organization_id))
}

/// Returns the indicator document of a fiscal year, from the cache when the store has not
/// moved since it was computed.
pub async fn indicator_document(state: &QueryState, fiscal_year: FiscalYear, organization_id: Option<String>) -> Result<Value, QueryError> {
    if let Some(snapshots) = &state.snapshots {
        let snapshot = snapshots.served().await?;
        let raw = snapshot.figures.raw(fiscal_year, organization_id.as_deref());
        let previous_on_platform = snapshot.figures.raw(fiscal_year.previous(), organization_id.as_deref()).consultations.on_platform;
        return document_from_raw(&state.targets, fiscal_year, organization_id, raw, previous_on_platform);
    }
    cached(state, Document::Indicators, fiscal_year, organization_id.clone(), || async {
        let raw = state.store.raw_figures(fiscal_year, organization_id.as_deref()).await?;
        let previous_on_platform = state.store.on_platform(fiscal_year.previous(), organization_id.as_deref()).await?;
        document_from_raw(&state.targets, fiscal_year, organization_id, raw, previous_on_platform)
    })
    .await
}

/// Builds the indicator document from raw counts and the previous year's consultations on the
/// platform: the one derivation of shares, means, medians and targets (the audit uses it too).
pub fn document_from_raw(
    targets: &[TargetDefinition],
    fiscal_year: FiscalYear,
    organization_id: Option<String>,
    raw: agora_store::RawFigures,
    previous_on_platform: u64,
) -> Result<Value, QueryError> {
    let figures = Figures::from_raw(raw);
    let targets = targets.iter().map(|t| targets::evaluate(t, &figures.consultations, previous_on_platform)).collect();
    serde_json::to_value(IndicatorsDocument { fiscal_year, organization_id, figures, targets })
        .map_err(|e| QueryError::Unexpected(e.into()))
}

/// Returns the cached document of `kind` for (fiscal year, organization) if the store has not
/// moved since it was computed, else computes, caches and returns it.
async fn cached<F, Fut>(
    state: &QueryState,
    kind: Document,
    fiscal_year: FiscalYear,
    organization_id: Option<String>,
    compute: F,
) -> Result<Value, QueryError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Value, QueryError>>,
{
    let version = state.store.version().await?;
    let key = (kind, fiscal_year, organization_id);
    if let Some((at, doc)) = state.cache.lock().expect("cache lock").entries.get(&key) {
        if *at == version {
            state.metrics.indicator_cache.with_label_values(&["hit"]).inc();
            return Ok(doc.clone());
        }
    }
    state.metrics.indicator_cache.with_label_values(&["miss"]).inc();
    let doc = compute().await?;
    let mut cache = state.cache.lock().expect("cache lock");
    if cache.entries.len() >= CACHE_ENTRIES {
        cache.entries.clear();
    }
    cache.entries.insert(key, (version, doc.clone()));
    Ok(doc)
}

async fn consultation(
    State(state): State<Arc<QueryState>>,
    headers: HeaderMap,
    Path(consultation_id): Path<String>,
) -> Result<Json<ConsultationView>, QueryError> {
    let scope = authorize(&state, &headers)?;
    let view = state
        .store
        .consultation(&consultation_id)
        .await?
        .ok_or_else(|| QueryError::NotFound(format!("no opened consultation {consultation_id}")))?;
    check_organization(&scope, &view.organization_id)?;
    Ok(Json(view))
}

async fn pipeline(State(state): State<Arc<QueryState>>, headers: HeaderMap) -> Result<Json<Value>, QueryError> {
    authorize(&state, &headers)?;
    let unavailable = |e: agora_eventlog::LogError| QueryError::Unavailable(e.into());
    let ends = state.log.end_positions().await.map_err(unavailable)?;
    let projected = snapshot::served_positions(&state.log, &state.store).await?;
    // On Kafka dead letters live in their own topic; on the embedded log, in the store.
    let dead_letters = match &state.log {
        EventLog::Kafka(log) => log.dead_letter_count().await.map_err(unavailable)?,
        EventLog::Sqlite(_) => state.store.dead_letter_count().await?,
    };
    let projected_lag = lag(&ends, &projected);
    // What the served figures reflect: the store itself, or the snapshot served from it.
    let (served_positions, served) = match &state.snapshots {
        None => (projected.clone(), Value::Null),
        Some(snapshots) => {
            let current = snapshots.current();
            // Refreshes start here only once the projector is done, not to compete with it.
            if projected_lag == 0 {
                let stale = match &current {
                    None => true,
                    // A store that does not answer cannot be refreshed from; the lag says so.
                    Some(snapshot) => {
                        snapshot.positions != projected || state.store.version().await.is_ok_and(|v| v != snapshot.figures.version)
                    }
                };
                if stale {
                    snapshots.refresh_in_background();
                }
            }
            match current {
                None => (Positions::new(), Value::Null),
                Some(snapshot) => (
                    snapshot.positions.clone(),
                    json!({
                        "positions": snapshot.positions,
                        "computed_at": snapshot.computed_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    }),
                ),
            }
        }
    };
    let lag_events = lag(&ends, &served_positions);
    Ok(Json(json!({
        "lag_events": lag_events,
        "caught_up": lag_events == 0,
        "projected_lag_events": projected_lag,
        "log": { "backend": state.log.backend(), "end_offsets": ends },
        "store": { "backend": state.store.backend(), "positions": projected },
        "snapshot": served,
        "dead_letters": dead_letters,
        "checked_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })))
}

/// Serves the OpenAPI 3 description of every route (all roles); `tests/openapi.rs` checks it
/// against the real router.
async fn openapi() -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], include_str!("../assets/openapi.json"))
}

async fn dashboard() -> Html<&'static str> {
    Html(include_str!("../assets/dashboard.html"))
}
