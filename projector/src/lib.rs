//! The projector role: reads the event log, folds each batch into row changes and applies
//! them to the store, then advances its position.
//!
//! - On the embedded log, the position lives in the store and is written in the same
//!   transaction as the changes.
//! - On Kafka, projectors form one consumer group; a member commits a partition's position
//!   only after the store applied every record before it, and dead letters go to the
//!   dead-letter topic (acknowledged before the commit).
//!
//! Delivery is at-least-once either way; every row change is idempotent and commutative, so
//! each event counts exactly once across crashes, rebalances and redeliveries.

pub mod fold;
pub mod metrics;

use std::time::{Duration, Instant};

use agora_eventlog::{decode, lag, EventLog, GroupConsumer, KafkaLog, LogRecord, Positions};
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
    /// How long a batch may keep gathering records after its first one, so that a store
    /// that wants few, large inserts (ClickHouse) gets them. Zero applies what is there.
    pub linger: Duration,
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
            linger: Duration::ZERO,
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
        if let EventLog::Kafka(log) = &self.log {
            let log = log.clone();
            return self.run_group(log, shutdown).await;
        }
        self.metrics.partitions_owned.set(1);
        let mut appended = self.log.appended();
        let mut backoff = self.config.initial_backoff;
        while !shutdown.is_cancelled() {
            let started = tokio::time::Instant::now();
            match self.step().await {
                Ok(outcome) => {
                    backoff = self.config.initial_backoff;
                    if outcome.applied > 0 && outcome.applied < self.config.batch_size {
                        // Partial batches wait out the linger, so inserts stay few and large.
                        tokio::select! {
                            _ = tokio::time::sleep_until(started + self.config.linger) => {}
                            _ = shutdown.cancelled() => {}
                        }
                    }
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
                    self.back_off(&error, "projection step failed; backing off", &mut backoff, &shutdown).await;
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
            let (changes, dead_letters) = fold_records(&records);
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

    /// Counts and logs a backend failure, then waits `backoff` (doubled for next time, up to
    /// the maximum). Returns `false` when shutdown came first.
    async fn back_off(&self, error: &anyhow::Error, message: &'static str, backoff: &mut Duration, shutdown: &CancellationToken) -> bool {
        self.metrics.store_errors.inc();
        warn!(error = format!("{error:#}"), backoff_ms = backoff.as_millis() as u64, "{message}");
        let waited = tokio::select! {
            _ = tokio::time::sleep(*backoff) => true,
            _ = shutdown.cancelled() => false,
        };
        *backoff = (*backoff * 2).min(self.config.max_backoff);
        waited
    }

    /// Runs steps until the store reflects the whole log as it was when called.
    pub async fn catch_up(&self) -> anyhow::Result<()> {
        while self.step().await?.lag_events > 0 {}
        Ok(())
    }

    /// The Kafka loop: consume as a member of the group, apply, then commit.
    async fn run_group(self, log: KafkaLog, shutdown: CancellationToken) -> anyhow::Result<()> {
        let consumer = log.group_consumer()?;
        let mut backoff = self.config.initial_backoff;
        // Lag is measured beside the loop, so broker round trips never delay consumption.
        let lag_task = {
            let (log, gauge, stop) = (log.clone(), self.metrics.lag_events.clone(), shutdown.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    if let (Ok(ends), Ok(committed)) = (log.end_positions().await, log.group_positions().await) {
                        gauge.set(lag(&ends, &committed) as i64);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.cancelled() => {}
                    }
                }
            })
        };
        while !shutdown.is_cancelled() {
            let batch = tokio::select! {
                batch = consumer.next_batch(self.config.batch_size, self.config.poll_interval, self.config.linger) => batch,
                _ = shutdown.cancelled() => break,
            };
            match batch {
                Ok(records) => {
                    backoff = self.config.initial_backoff;
                    if !records.is_empty() && !self.apply_group_batch(&log, &consumer, records, &shutdown).await {
                        break;
                    }
                }
                Err(error) => {
                    self.back_off(&anyhow::Error::from(error), "kafka consume failed; backing off", &mut backoff, &shutdown).await;
                }
            }
            self.metrics.partitions_owned.set(consumer.owned().len() as i64);
        }
        lag_task.abort();
        consumer.leave();
        info!("projector stopped");
        Ok(())
    }

    /// Applies one consumed batch and commits its positions. Retries the store (and the
    /// dead-letter topic) with back-off until they take the batch; returns `false` when
    /// shutdown came first, leaving the batch uncommitted to be read again.
    async fn apply_group_batch(
        &self,
        log: &KafkaLog,
        consumer: &GroupConsumer,
        records: Vec<LogRecord>,
        shutdown: &CancellationToken,
    ) -> bool {
        let started = Instant::now();
        let mut next = Positions::new();
        for record in &records {
            let position = next.entry(record.partition).or_insert(0);
            *position = (*position).max(record.offset + 1);
        }
        let (changes, dead_letters) = fold_records(&records);
        // The first attempt takes the changes; a retry folds the records again rather than
        // every batch keeping a copy in memory for a retry that rarely comes.
        let mut changes = Some(changes);
        let mut dead_lettered = 0;
        let mut applied = false;
        let mut backoff = self.config.initial_backoff;
        loop {
            let attempt: anyhow::Result<()> = async {
                while let Some(letter) = dead_letters.get(dead_lettered) {
                    log.dead_letter(letter.partition, letter.offset, &letter.payload, &letter.reason).await?;
                    dead_lettered += 1;
                    self.metrics.dead_letters.inc();
                }
                if !applied {
                    let changes = changes.take().unwrap_or_else(|| fold_records(&records).0);
                    self.store.apply(changes, Vec::new(), Positions::new()).await.context("failed to apply a batch to the store")?;
                    applied = true;
                    agora_store::fail_point("projector.before_commit");
                }
                consumer.commit(&next).await.context("failed to commit positions")?;
                Ok(())
            }
            .await;
            match attempt {
                Ok(()) => break,
                Err(error) => {
                    if !self.back_off(&error, "batch not applied; retrying", &mut backoff, shutdown).await {
                        return false;
                    }
                }
            }
        }
        self.metrics.events_applied.inc_by(records.len() as u64);
        self.metrics.batches_applied.inc();
        self.metrics.batch_seconds.observe(started.elapsed().as_secs_f64());
        debug!(records = records.len(), partitions = next.len(), dead_letters = dead_letters.len(), "batch applied and committed");
        true
    }
}

/// Folds records into row changes; a record that cannot be decoded or folded becomes a dead
/// letter with its reason instead.
pub fn fold_records(records: &[LogRecord]) -> (Vec<RowChange>, Vec<DeadLetter>) {
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

/// Rebuilds the read models from the beginning of the log: the store empties them in a
/// transaction readers do not see, every record up to the log's end (as it is once the
/// store's write lock is held) is folded again, and the result replaces the old read models
/// at once. `on_progress` receives the number of records folded so far and the total.
pub async fn rebuild(
    log: &EventLog,
    store: &Store,
    batch_size: usize,
    mut on_progress: impl FnMut(u64, u64),
) -> anyhow::Result<RebuildSummary> {
    let mut rebuild = store.begin_rebuild().await.context("failed to start the rebuild")?;
    let ends = log.end_positions().await.context("failed to read the log's end")?;
    let total: u64 = ends.values().map(|&end| end.max(0) as u64).sum();
    let mut summary = RebuildSummary { records: 0, dead_letters: 0 };
    on_progress(0, total);
    for (&partition, &end) in &ends {
        let mut from = 0;
        while from < end {
            let records = log.read(partition, from, batch_size.min((end - from) as usize)).await.context("failed to read the log")?;
            let Some(last) = records.last() else { break };
            from = last.offset + 1;
            let (changes, dead_letters) = fold_records(&records);
            summary.records += records.len() as u64;
            summary.dead_letters += dead_letters.len() as u64;
            rebuild.apply(changes, dead_letters).await.context("failed to apply a batch to the rebuild")?;
            on_progress(summary.records, total);
        }
    }
    rebuild.commit(ends).await.context("failed to switch to the rebuilt read models")?;
    info!(records = summary.records, dead_letters = summary.dead_letters, "read models rebuilt");
    Ok(summary)
}

/// What a rebuild folded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildSummary {
    pub records: u64,
    pub dead_letters: u64,
}
