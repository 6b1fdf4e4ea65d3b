//! The projection store: read models folded from the event log by the projector and read by
//! the query role. Backends sit behind one enum: the embedded SQLite store in the data
//! folder today, ClickHouse next.
//!
//! Every [`RowChange`] is idempotent and commutative (each keeps a minimum, a maximum, a set
//! member or a flag), so applying any permutation or repetition of the same changes gives
//! the same tables: the store makes at-least-once delivery effectively-once.

pub mod changes;
pub mod model;
pub mod sqlite;

use agora_eventlog::Positions;
use agora_schemas::FiscalYear;

pub use changes::{ConsultationField, DeadLetter, RowChange};
pub use model::{ConsultationFigures, ConsultationView, Figures, RawFigures};
pub use sqlite::SqliteStore;

/// Failures at the store boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot serve right now; the caller may retry.
    #[error("projection store unavailable")]
    Unavailable(#[source] anyhow::Error),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// The projection store, whichever backend holds it.
#[derive(Clone)]
pub enum Store {
    Sqlite(SqliteStore),
}

impl Store {
    /// Applies a batch of changes and records the log positions they reach, atomically:
    /// after a crash either both are there or neither is.
    pub async fn apply(&self, changes: Vec<RowChange>, dead_letters: Vec<DeadLetter>, positions: Positions) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(store) => store.apply(changes, dead_letters, positions).await,
        }
    }

    /// Returns the log positions the read models reflect.
    pub async fn positions(&self) -> Result<Positions, StoreError> {
        match self {
            Store::Sqlite(store) => store.positions().await,
        }
    }

    /// Returns the counts behind the SPEC §3 indicators of a fiscal year, for all of
    /// government or one organization.
    pub async fn raw_figures(&self, fiscal_year: FiscalYear, organization_id: Option<&str>) -> Result<RawFigures, StoreError> {
        match self {
            Store::Sqlite(store) => store.raw_figures(fiscal_year, organization_id.map(str::to_owned)).await,
        }
    }

    /// Returns the number of consultations on the platform in a fiscal year (not cancelled).
    pub async fn on_platform(&self, fiscal_year: FiscalYear, organization_id: Option<&str>) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(store) => store.on_platform(fiscal_year, organization_id.map(str::to_owned)).await,
        }
    }

    /// Returns one consultation's state and figures, if it has been opened.
    pub async fn consultation(&self, consultation_id: &str) -> Result<Option<ConsultationView>, StoreError> {
        match self {
            Store::Sqlite(store) => store.consultation(consultation_id.to_owned()).await,
        }
    }

    /// Returns how many records have been dead-lettered.
    pub async fn dead_letter_count(&self) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(store) => store.dead_letter_count().await,
        }
    }

    /// Returns the backend's name, for logs and metrics.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
        }
    }
}
