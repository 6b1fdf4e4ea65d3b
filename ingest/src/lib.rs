//! The ingest role: `POST /v1/events` turns request bodies (JSON array, one object, or
//! NDJSON) into validated, pseudonymized events and appends them to the event log, answering
//! only once the log holds them durably; `GET /v1/schemas` serves the event schemas.

pub mod metrics;
pub mod pseudonym;

use std::sync::Arc;
use std::time::Instant;

use agora_eventlog::{EventLog, LogError};
use agora_schemas::api::{bearer_token, constant_time_eq, error_body};
use agora_schemas::json_schema::all_schemas;
use agora_schemas::validate::{validate_event, ErrorKind, ValidationError};
use agora_schemas::Event;
use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;
use tracing::{error, info, warn};

pub use metrics::IngestMetrics;
pub use pseudonym::Pseudonymizer;

/// Most events in one request (SPEC §4).
pub const MAX_EVENTS: usize = 10_000;
/// Most bytes in one request body (SPEC §4): 10 MiB.
pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

/// A token allowed to post events, and the source it stands for (logged, never the token).
#[derive(Debug, Clone)]
pub struct IngestToken {
    pub source: String,
    pub token: String,
}

/// What the ingest role needs.
pub struct IngestState {
    pub log: EventLog,
    pub pseudonymizer: Pseudonymizer,
    pub tokens: Vec<IngestToken>,
    pub metrics: IngestMetrics,
}

/// Returns the ingest role's routes.
pub fn router(state: Arc<IngestState>) -> Router {
    Router::new().route("/v1/events", post(post_events)).route("/v1/schemas", get(get_schemas)).with_state(state)
}

/// Failures at the ingest boundary, each with its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("a valid ingest token is required: Authorization: Bearer <token>")]
    Unauthorized,
    #[error("request body exceeds {MAX_BODY_BYTES} bytes")]
    BodyTooLarge,
    #[error("request holds {0} events; at most {MAX_EVENTS} are allowed")]
    TooManyEvents(usize),
    #[error("{0}")]
    Malformed(String),
    #[error("the event log cannot take events right now; nothing in this request was accepted, retry later")]
    Unavailable(#[source] LogError),
    #[error("internal error")]
    Unexpected(#[from] anyhow::Error),
}

impl IngestError {
    fn status(&self) -> StatusCode {
        match self {
            IngestError::Unauthorized => StatusCode::UNAUTHORIZED,
            IngestError::BodyTooLarge | IngestError::TooManyEvents(_) => StatusCode::PAYLOAD_TOO_LARGE,
            IngestError::Malformed(_) => StatusCode::BAD_REQUEST,
            IngestError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            IngestError::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            IngestError::Unauthorized => "unauthorized",
            IngestError::BodyTooLarge | IngestError::TooManyEvents(_) => "payload_too_large",
            IngestError::Malformed(_) => "malformed_body",
            IngestError::Unavailable(_) => "backend_unavailable",
            IngestError::Unexpected(_) => "internal",
        }
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        match &self {
            IngestError::Unavailable(source) => {
                // The log error's causes say why (broker down, timeout, fenced producer).
                let causes = std::iter::successors(std::error::Error::source(source), |e| e.source()).map(|e| e.to_string());
                warn!(error = causes.collect::<Vec<_>>().join(": "), "event log unavailable")
            }
            IngestError::Unexpected(source) => {
                error!(error = format!("{source:#}"), "ingest failed")
            }
            _ => {}
        }
        (self.status(), Json(error_body(self.code(), &self.to_string()))).into_response()
    }
}

/// One rejected element of a request body.
#[derive(Debug, Serialize)]
pub struct Rejection {
    pub index: usize,
    pub event_id: Option<String>,
    pub errors: Vec<String>,
}

/// The `202` reply.
#[derive(Debug, Serialize)]
pub struct IngestReply {
    pub accepted: usize,
    pub rejected: Vec<Rejection>,
}

async fn get_schemas() -> Json<Value> {
    Json(all_schemas())
}

async fn post_events(State(state): State<Arc<IngestState>>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let result = ingest(&state, &headers, body).await;
    let status = match &result {
        Ok(_) => StatusCode::ACCEPTED,
        Err(e) => e.status(),
    };
    if result.is_err() {
        state.metrics.requests_refused.with_label_values(&[status.as_str()]).inc();
    }
    state.metrics.request_seconds.with_label_values(&[status.as_str()]).observe(started.elapsed().as_secs_f64());
    match result {
        Ok(reply) => (StatusCode::ACCEPTED, Json(reply)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn ingest(state: &IngestState, headers: &HeaderMap, body: Body) -> Result<IngestReply, IngestError> {
    let source = authorize(&state.tokens, headers).ok_or(IngestError::Unauthorized)?.to_owned();
    let bytes = to_bytes(body, MAX_BODY_BYTES).await.map_err(|_| IngestError::BodyTooLarge)?;
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/x-ndjson"));
    let pseudonymizer = state.pseudonymizer.clone();
    // Parsing, validating and hashing up to 10,000 events is CPU work: keep it off the runtime.
    let (events, rejected) = tokio::task::spawn_blocking(move || -> Result<_, IngestError> {
        let elements = parse_body(&bytes, ndjson)?;
        Ok(check_elements(elements.into_iter(), &pseudonymizer))
    })
    .await
    .map_err(|e| anyhow::anyhow!("validation task failed: {e}"))??;

    for rejection in &rejected {
        state.metrics.events_rejected.with_label_values(&[rejection.1.label()]).inc();
    }
    state.log.append(&events).await.map_err(IngestError::Unavailable)?;
    state.metrics.events_accepted.inc_by(events.len() as u64);
    info!(source, accepted = events.len(), rejected = rejected.len(), "events ingested");
    Ok(IngestReply { accepted: events.len(), rejected: rejected.into_iter().map(|(r, _)| r).collect() })
}

/// Returns the source of the bearer token in `headers`, if it is an ingest token.
fn authorize<'a>(tokens: &'a [IngestToken], headers: &HeaderMap) -> Option<&'a str> {
    let presented = bearer_token(headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()))?;
    tokens.iter().find(|t| constant_time_eq(t.token.as_bytes(), presented.as_bytes())).map(|t| t.source.as_str())
}

/// One element of a body: a JSON value, or an NDJSON line that is not JSON.
pub enum Element {
    Json(Value),
    Invalid(String),
}

fn parse_body(bytes: &[u8], ndjson: bool) -> Result<Vec<Element>, IngestError> {
    let elements = if ndjson {
        let text = std::str::from_utf8(bytes).map_err(|_| IngestError::Malformed("body is not UTF-8".into()))?;
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.len() > MAX_EVENTS {
            return Err(IngestError::TooManyEvents(lines.len()));
        }
        lines
            .into_iter()
            .map(|line| match serde_json::from_str(line) {
                Ok(value) => Element::Json(value),
                Err(e) => Element::Invalid(format!("line {}, column {}", e.line(), e.column())),
            })
            .collect()
    } else {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Array(items)) => {
                if items.len() > MAX_EVENTS {
                    return Err(IngestError::TooManyEvents(items.len()));
                }
                items.into_iter().map(Element::Json).collect()
            }
            Ok(object @ Value::Object(_)) => vec![Element::Json(object)],
            Ok(_) => {
                return Err(IngestError::Malformed("body must be a JSON array of events or one event object".into()));
            }
            Err(e) => {
                return Err(IngestError::Malformed(format!(
                    "body is not valid JSON (line {}, column {}); send a JSON array, one object, or NDJSON with Content-Type: application/x-ndjson",
                    e.line(),
                    e.column()
                )));
            }
        }
    };
    Ok(elements)
}

/// Validates and pseudonymizes each element: accepted events in body order, and the
/// rejections with the kind of their first error (for metrics). The one path from raw
/// platform events to log events, used by `POST /v1/events` and by `agora demo`.
pub fn check_elements(
    elements: impl ExactSizeIterator<Item = Element>,
    pseudonymizer: &Pseudonymizer,
) -> (Vec<Event>, Vec<(Rejection, ErrorKind)>) {
    let received_at = chrono::Utc::now();
    let mut events = Vec::with_capacity(elements.len());
    let mut rejected = Vec::new();
    for (index, element) in elements.enumerate() {
        let (result, event_id) = match element {
            Element::Json(value) => {
                let event_id = value.get("event_id").and_then(Value::as_str).map(str::to_owned);
                (validate_event(&value, received_at), event_id)
            }
            Element::Invalid(detail) => (Err(vec![ValidationError::invalid_json(&detail)]), None),
        };
        match result {
            Ok(mut event) => {
                event.participant_id = event.participant_id.map(|p| pseudonymizer.pseudonym(&p));
                events.push(event);
            }
            Err(errors) => {
                let kind = errors[0].kind;
                let errors = errors.iter().map(ToString::to_string).collect();
                rejected.push((Rejection { index, event_id, errors }, kind));
            }
        }
    }
    (events, rejected)
}
