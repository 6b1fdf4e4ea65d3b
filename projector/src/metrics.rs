//! The projector's Prometheus metrics, counted per batch.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Opts, Registry};

/// Metrics of the projector role.
#[derive(Clone)]
pub struct ProjectorMetrics {
    pub events_applied: IntCounter,
    pub batches_applied: IntCounter,
    pub dead_letters: IntCounter,
    pub lag_events: IntGauge,
    pub batch_seconds: Histogram,
    pub store_errors: IntCounter,
    pub partitions_owned: IntGauge,
}

impl ProjectorMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = ProjectorMetrics {
            events_applied: IntCounter::with_opts(Opts::new("agora_projector_events_applied_total", "Events folded into the read models"))?,
            batches_applied: IntCounter::with_opts(Opts::new(
                "agora_projector_batches_applied_total",
                "Batches applied to the projection store",
            ))?,
            dead_letters: IntCounter::with_opts(Opts::new(
                "agora_projector_dead_letters_total",
                "Records that could not be decoded or applied and were dead-lettered",
            ))?,
            lag_events: IntGauge::with_opts(Opts::new(
                "agora_projector_lag_events",
                "Events in the log that the read models do not reflect yet",
            ))?,
            batch_seconds: Histogram::with_opts(
                HistogramOpts::new("agora_projector_batch_duration_seconds", "Time to read, fold and apply one batch")
                    .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            )?,
            store_errors: IntCounter::with_opts(Opts::new(
                "agora_projector_backend_errors_total",
                "Failed attempts to read the log or write the store (retried with back-off)",
            ))?,
            partitions_owned: IntGauge::with_opts(Opts::new(
                "agora_projector_partitions_owned",
                "Log partitions this projector consumes now (1 on the embedded log)",
            ))?,
        };
        registry.register(Box::new(metrics.partitions_owned.clone()))?;
        registry.register(Box::new(metrics.events_applied.clone()))?;
        registry.register(Box::new(metrics.batches_applied.clone()))?;
        registry.register(Box::new(metrics.dead_letters.clone()))?;
        registry.register(Box::new(metrics.lag_events.clone()))?;
        registry.register(Box::new(metrics.batch_seconds.clone()))?;
        registry.register(Box::new(metrics.store_errors.clone()))?;
        Ok(metrics)
    }
}
