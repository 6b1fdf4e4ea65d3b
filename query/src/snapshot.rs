//! Figure snapshots: how the query role serves indicators from a store that folds at read
//! time. On ClickHouse one scope's figures cost a scan of every row change, as much as all
//! scopes together, so the role reads the raw figures of every fiscal year and scope at once
//! (a [`FigureSet`]) with the log positions they reflect at least, and serves every request
//! from the newest complete snapshot.
//!
//! - A request checks the store's version (one cheap query, so a store that is down still
//!   answers 503). When the store has moved past the snapshot, one refresh starts in the
//!   background and the request is served the newest complete snapshot meanwhile: figures
//!   are never partial and never wait on a full fold once one exists.
//! - Freshness is honest: `/v1/pipeline` counts lag from the positions read *before* the
//!   snapshot's figures, so `lag_events: 0` means the served figures reflect every accepted
//!   event. While the projector still has events to apply, the pipeline route does not start
//!   refreshes of its own (they would compete with it for the store); requests for figures do.
//! - A refresh that fails is logged, and the next request computes in the foreground and
//!   reports its error rather than serving an ever older snapshot in silence.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use agora_eventlog::{EventLog, LogError, Positions};
use agora_store::{FigureSet, Store, StoreError};
use tracing::{debug, warn};

use crate::metrics::QueryMetrics;

/// The raw figures of every scope at one version of the store, and what they reflect.
#[derive(Debug)]
pub struct Snapshot {
    pub figures: FigureSet,
    /// Log positions read before the figures: the figures reflect at least these.
    pub positions: Positions,
    pub computed_at: chrono::DateTime<chrono::Utc>,
}

/// The snapshots of one query role; cheap to clone.
#[derive(Clone)]
pub struct Snapshots {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    log: EventLog,
    metrics: QueryMetrics,
    current: RwLock<Option<Arc<Snapshot>>>,
    /// One refresh at a time: a second would read the same state again.
    refresh: tokio::sync::Mutex<()>,
    /// A background refresh has been started and has not finished.
    refreshing: AtomicBool,
    /// The last refresh failed.
    failed: AtomicBool,
}

/// Why figures could not be served.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the event log is unavailable")]
    Log(#[from] LogError),
}

impl Snapshots {
    pub fn new(store: Store, log: EventLog, metrics: QueryMetrics) -> Self {
        Snapshots {
            inner: Arc::new(Inner {
                store,
                log,
                metrics,
                current: RwLock::new(None),
                refresh: tokio::sync::Mutex::new(()),
                refreshing: AtomicBool::new(false),
                failed: AtomicBool::new(false),
            }),
        }
    }

    /// Returns the newest complete snapshot, if any, without touching the store.
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.inner.current.read().expect("snapshot lock").clone()
    }

    /// Returns the snapshot to serve figures from: the current one when the store has not
    /// moved since; otherwise the newest complete one while a refresh runs in the background;
    /// computed now when there is none yet or the last refresh failed.
    pub async fn served(&self) -> Result<Arc<Snapshot>, SnapshotError> {
        let version = self.inner.store.version().await?;
        match self.current() {
            Some(snapshot) if snapshot.figures.version == version => {
                self.inner.metrics.indicator_cache.with_label_values(&["hit"]).inc();
                Ok(snapshot)
            }
            Some(snapshot) if !self.inner.failed.load(Ordering::Acquire) => {
                self.inner.metrics.indicator_cache.with_label_values(&["stale"]).inc();
                self.refresh_in_background();
                Ok(snapshot)
            }
            _ => {
                self.inner.metrics.indicator_cache.with_label_values(&["miss"]).inc();
                self.refresh(Some(version)).await
            }
        }
    }

    /// Starts a refresh in the background unless one is already running.
    pub fn refresh_in_background(&self) {
        if self.inner.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let snapshots = self.clone();
        tokio::spawn(async move {
            if let Err(error) = snapshots.refresh(None).await {
                warn!(error = format!("{error:#}"), "figure snapshot refresh failed");
            }
            snapshots.inner.refreshing.store(false, Ordering::Release);
        });
    }

    /// Reads a new snapshot, unless the current one (once the lock is ours) is already at
    /// `wanted` or newer, and makes it current.
    async fn refresh(&self, wanted: Option<i64>) -> Result<Arc<Snapshot>, SnapshotError> {
        let _one_at_a_time = self.inner.refresh.lock().await;
        if let (Some(wanted), Some(current)) = (wanted, self.current()) {
            if current.figures.version >= wanted && !self.inner.failed.load(Ordering::Acquire) {
                return Ok(current);
            }
        }
        let started = Instant::now();
        let outcome = async {
            let positions = served_positions(&self.inner.log, &self.inner.store).await?;
            let figures = self.inner.store.figure_set().await?;
            Ok::<_, SnapshotError>(Snapshot { figures, positions, computed_at: chrono::Utc::now() })
        }
        .await;
        self.inner.failed.store(outcome.is_err(), Ordering::Release);
        let snapshot = Arc::new(outcome?);
        let seconds = started.elapsed().as_secs_f64();
        self.inner.metrics.snapshot_seconds.observe(seconds);
        debug!(version = snapshot.figures.version, scopes = snapshot.figures.scopes.len(), seconds, "figure snapshot refreshed");
        *self.inner.current.write().expect("snapshot lock") = Some(snapshot.clone());
        Ok(snapshot)
    }
}

/// Returns how far the read models go in the log: on Kafka the projectors' committed group
/// positions (the store keeps none), on the embedded log the store's own.
pub async fn served_positions(log: &EventLog, store: &Store) -> Result<Positions, SnapshotError> {
    Ok(match log {
        EventLog::Kafka(log) => log.group_positions().await?,
        EventLog::Sqlite(_) => store.positions().await?,
    })
}
