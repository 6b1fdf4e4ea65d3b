//! The query role's Prometheus metrics.

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Metrics of the query role.
#[derive(Clone)]
pub struct QueryMetrics {
    /// Request latency by route template (bounded) and status.
    pub request_seconds: HistogramVec,
    /// Indicator computations served from the cache or computed, by outcome.
    pub indicator_cache: IntCounterVec,
    /// Time to read a figure snapshot (every scope) from the store.
    pub snapshot_seconds: Histogram,
}

impl QueryMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = QueryMetrics {
            request_seconds: HistogramVec::new(
                HistogramOpts::new("agora_query_request_duration_seconds", "Time to answer a query request")
                    .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
                &["route", "status"],
            )?,
            indicator_cache: IntCounterVec::new(
                Opts::new(
                    "agora_query_indicator_cache_total",
                    "Indicator documents served current (hit), served while a refresh runs (stale), or computed (miss)",
                ),
                &["outcome"],
            )?,
            snapshot_seconds: Histogram::with_opts(
                HistogramOpts::new("agora_query_snapshot_duration_seconds", "Time to read the figures of every scope from the store")
                    .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
            )?,
        };
        registry.register(Box::new(metrics.request_seconds.clone()))?;
        registry.register(Box::new(metrics.indicator_cache.clone()))?;
        registry.register(Box::new(metrics.snapshot_seconds.clone()))?;
        Ok(metrics)
    }
}
