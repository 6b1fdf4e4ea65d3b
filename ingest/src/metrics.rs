//! The ingest role's Prometheus metrics, counted per request.

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

/// Metrics of the ingest role.
#[derive(Clone)]
pub struct IngestMetrics {
    pub events_accepted: IntCounter,
    /// Rejected events by the kind of the first rule they break (a bounded label).
    pub events_rejected: IntCounterVec,
    /// Requests refused whole, by status code.
    pub requests_refused: IntCounterVec,
    pub request_seconds: HistogramVec,
}

impl IngestMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = IngestMetrics {
            events_accepted: IntCounter::with_opts(Opts::new(
                "agora_ingest_events_accepted_total",
                "Events written durably to the event log",
            ))?,
            events_rejected: IntCounterVec::new(
                Opts::new("agora_ingest_events_rejected_total", "Events rejected by validation, by reason"),
                &["reason"],
            )?,
            requests_refused: IntCounterVec::new(
                Opts::new("agora_ingest_requests_refused_total", "Requests refused as a whole, by status"),
                &["status"],
            )?,
            request_seconds: HistogramVec::new(
                HistogramOpts::new("agora_ingest_request_duration_seconds", "Time to answer POST /v1/events")
                    .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                &["status"],
            )?,
        };
        registry.register(Box::new(metrics.events_accepted.clone()))?;
        registry.register(Box::new(metrics.events_rejected.clone()))?;
        registry.register(Box::new(metrics.requests_refused.clone()))?;
        registry.register(Box::new(metrics.request_seconds.clone()))?;
        Ok(metrics)
    }
}
