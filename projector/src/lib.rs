//! The projector role: reads the event log from the positions the store last recorded,
//! folds each batch into row changes and applies them together with the new positions.
//! Delivery from the log is at-least-once; because changes and positions land atomically
//! and every change is idempotent, each event counts exactly once across crashes.

pub mod fold;
pub mod metrics;

use std::time::{Duration, Instant};

use agora_eventlog::{decode, lag, EventLog, LogRecord, Positions};
use agora_store::{DeadLetter, RowChange, Store};
use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use fold::{fold, FoldError};
pub use metrics::ProjectorMetrics;

/// How the projector batches and waits.
#[derive(Debug, Clone)]
pub struct ProjectorConfig {
    /// Most records read and applied in one transaction.
    pub batch_size: usize,
    /// How often to look for new records when nothing wakes the projector sooner (records
    /// appended by another process).
    pub poll_interval: Duration,
    /// First wait after a backend failure; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        ProjectorConfig {
            batch_size: 5_000,
            poll_interval: Duration::from_millis(200),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// The projector: one log, one store.
pub struct Projector {
    log: EventLog,
    store: Store,
    config: ProjectorConfig,
    metrics: ProjectorMetrics,
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepOutcome {
    pub applied: usize,
    pub lag_events: u64,
}

impl Projector {
    pub fn new(log: EventLog, store: Store, config: ProjectorConfig, metrics: ProjectorMetrics) -> Self {
        Projector { log, store, config, metrics }
    }

    /// Runs until `shutdown` is cancelled, then returns after the batch in flight is
    /// committed (or abandoned, to be read again at the next start).
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        info!(log = self.log.backend(), store = self.store.backend(), "projector started");
        let mut appended = self.log.appended();
        let mut backoff = self.config.initial_backoff;
        while !shutdown.is_cancelled() {
            match self.step().await {
                Ok(outcome) => {
                    backoff = self.config.initial_backoff;
                    if outcome.lag_events > 0 {
                        continue;
                    }
                    tokio::select! {
                        _ = appended.changed() => {}
                        _ = tokio::time::sleep(self.config.poll_interval) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
                Err(error) => {
                    self.metrics.store_errors.inc();
                    warn!(error = format!("{error:#}"), backoff_ms = backoff.as_millis() as u64, "projection step failed; backing off");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => {}
                    }
                    backoff = (backoff * 2).min(self.config.max_backoff);
                }
            }
        }
        info!("projector stopped");
        Ok(())
    }

    /// Reads, folds and applies at most one batch per partition behind, and returns how
    /// many records it applied and how many are left.
    pub async fn step(&self) -> anyhow::Result<StepOutcome> {
        let started = Instant::now();
        let mut positions = self.store.positions().await.context("failed to read store positions")?;
        let ends = self.log.end_positions().await.context("failed to read log end positions")?;
        let mut applied = 0;
        for (&partition, &end) in &ends {
            let from = positions.get(&partition).copied().unwrap_or(0);
            if from >= end {
                continue;
            }
            let records = self.log.read(partition, from, self.config.batch_size).await.context("failed to read the log")?;
            let Some(last) = records.last() else { continue };
            let next = last.offset + 1;
            let (changes, dead_letters) = self.fold_records(&records);
            let dead = dead_letters.len();
            self.store
                .apply(changes, dead_letters, Positions::from([(partition, next)]))
                .await
                .context("failed to apply a batch to the store")?;
            positions.insert(partition, next);
            applied += records.len();
            self.metrics.dead_letters.inc_by(dead as u64);
            debug!(partition, from, next, records = records.len(), dead_letters = dead, "batch applied");
        }
        let lag_events = lag(&ends, &positions);
        self.metrics.lag_events.set(lag_events as i64);
        if applied > 0 {
            self.metrics.events_applied.inc_by(applied as u64);
            self.metrics.batches_applied.inc();
            self.metrics.batch_seconds.observe(started.elapsed().as_secs_f64());
        }
        Ok(StepOutcome { applied, lag_events })
    }

    /// Runs steps until the store reflects the whole log as it was when called.
    pub async fn catch_up(&self) -> anyhow::Result<()> {
        while self.step().await?.lag_events > 0 {}
        Ok(())
    }

    fn fold_records(&self, records: &[LogRecord]) -> (Vec<RowChange>, Vec<DeadLetter>) {
        let mut changes = Vec::with_capacity(records.len());
        let mut dead_letters = Vec::new();
        for record in records {
            let folded = decode(&record.payload).map_err(|e| e.to_string()).and_then(|event| fold(&event).map_err(|e| e.to_string()));
            match folded {
                Ok(mut c) => changes.append(&mut c),
                Err(reason) => {
                    warn!(partition = record.partition, offset = record.offset, reason, "record dead-lettered");
                    dead_letters.push(DeadLetter {
                        partition: record.partition,
                        offset: record.offset,
                        reason,
                        payload: record.payload.clone(),
                    });
                }
            }
        }
        (changes, dead_letters)
    }
}
