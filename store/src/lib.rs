//! The projection store: read models folded from the event log by the projector and read by
//! the query role. Backends sit behind one enum: the embedded SQLite store in the data
//! folder, or ClickHouse.
//!
//! Every [`RowChange`] is idempotent and commutative (each keeps a minimum, a maximum, a set
//! member or a flag), so applying any permutation or repetition of the same changes gives
//! the same tables: the store makes at-least-once delivery effectively-once.

pub mod changes;
pub mod clickhouse;
pub mod model;
pub mod sqlite;

use agora_eventlog::Positions;
use agora_schemas::FiscalYear;

pub use changes::{ConsultationField, DeadLetter, RowChange};
pub use clickhouse::{ClickHouseRebuild, ClickHouseSettings, ClickHouseStore};
pub use model::{
    monthly_series, ConsultationFigures, ConsultationView, Coverage, FigureSet, Figures, MonthFigures, MonthlyRaw, RawFigures,
    SuggestionFigures,
};
pub use sqlite::{SqliteRebuild, SqliteStore};

/// Aborts the process at a named point when `AGORA_FAILPOINT` names it: the crash tests'
/// way to die at an exact step (a batch written but not committed, say).
pub fn fail_point(name: &str) {
    if std::env::var("AGORA_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("failpoint {name} reached: aborting");
        std::process::abort();
    }
}

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
    ClickHouse(ClickHouseStore),
}

impl Store {
    /// Applies a batch of changes and records the log positions they reach, atomically:
    /// after a crash either both are there or neither is.
    pub async fn apply(&self, changes: Vec<RowChange>, dead_letters: Vec<DeadLetter>, positions: Positions) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(store) => store.apply(changes, dead_letters, positions).await,
            Store::ClickHouse(store) => store.apply(changes, dead_letters, positions).await,
        }
    }

    /// Returns the log positions the read models reflect.
    pub async fn positions(&self) -> Result<Positions, StoreError> {
        match self {
            Store::Sqlite(store) => store.positions().await,
            Store::ClickHouse(store) => store.positions().await,
        }
    }

    /// Returns the counts behind the SPEC §3 indicators of every fiscal year, for all of
    /// government and each organization, read at one version of the store.
    pub async fn figure_set(&self) -> Result<FigureSet, StoreError> {
        match self {
            Store::Sqlite(store) => store.figure_set().await,
            Store::ClickHouse(store) => store.figure_set().await,
        }
    }

    /// Returns the counts behind the SPEC §3 indicators of one fiscal year, for all of
    /// government or one organization. ClickHouse folds at read time, so one scope costs it
    /// as much as every scope: it reads the whole set.
    pub async fn raw_figures(&self, fiscal_year: FiscalYear, organization_id: Option<&str>) -> Result<RawFigures, StoreError> {
        match self {
            Store::Sqlite(store) => store.raw_figures(fiscal_year, organization_id.map(str::to_owned)).await,
            Store::ClickHouse(store) => Ok(store.figure_set().await?.raw(fiscal_year, organization_id)),
        }
    }

    /// Returns the number of consultations on the platform in a fiscal year (not cancelled).
    pub async fn on_platform(&self, fiscal_year: FiscalYear, organization_id: Option<&str>) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(store) => store.on_platform(fiscal_year, organization_id.map(str::to_owned)).await,
            Store::ClickHouse(store) => Ok(store.figure_set().await?.raw(fiscal_year, organization_id).consultations.on_platform),
        }
    }

    /// Returns the organizations and fiscal years the store holds figures for.
    pub async fn coverage(&self) -> Result<Coverage, StoreError> {
        match self {
            Store::Sqlite(store) => store.coverage().await,
            Store::ClickHouse(store) => store.coverage().await,
        }
    }

    /// Returns what the monthly series of a fiscal year are made of; see [`MonthlyRaw`].
    pub async fn monthly_raw(&self, fiscal_year: FiscalYear, organization_id: Option<&str>) -> Result<MonthlyRaw, StoreError> {
        match self {
            Store::Sqlite(store) => store.monthly_raw(fiscal_year, organization_id.map(str::to_owned)).await,
            Store::ClickHouse(store) => store.monthly_raw(fiscal_year, organization_id).await,
        }
    }

    /// Returns one consultation's state and figures, if it has been opened.
    pub async fn consultation(&self, consultation_id: &str) -> Result<Option<ConsultationView>, StoreError> {
        match self {
            Store::Sqlite(store) => store.consultation(consultation_id.to_owned()).await,
            Store::ClickHouse(store) => store.consultation(consultation_id).await,
        }
    }

    /// Returns a number that changes whenever the read models change (every applied batch,
    /// every rebuild): what caches of figures are keyed on.
    pub async fn version(&self) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(store) => store.version().await,
            Store::ClickHouse(store) => store.version().await,
        }
    }

    /// Returns how many records have been dead-lettered.
    pub async fn dead_letter_count(&self) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(store) => store.dead_letter_count().await,
            Store::ClickHouse(store) => store.dead_letter_count().await,
        }
    }

    /// Starts rebuilding the read models from nothing; see [`Rebuild`].
    pub async fn begin_rebuild(&self) -> Result<Rebuild, StoreError> {
        match self {
            Store::Sqlite(store) => Ok(Rebuild::Sqlite(store.begin_rebuild().await?)),
            Store::ClickHouse(store) => Ok(Rebuild::ClickHouse(store.begin_rebuild().await?)),
        }
    }

    /// Returns the newest migration applied to the store's tables.
    pub async fn schema_version(&self) -> Result<u32, StoreError> {
        match self {
            Store::Sqlite(store) => store.schema_version().await,
            Store::ClickHouse(store) => store.schema_version().await,
        }
    }

    /// Returns the backend's name, for logs and metrics.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::ClickHouse(_) => "clickhouse",
        }
    }
}

/// Read models being rebuilt from the log. Until [`Rebuild::commit`], the query role keeps
/// serving the old figures; after it, the rebuilt ones, with no partial state in between.
pub enum Rebuild {
    Sqlite(SqliteRebuild),
    ClickHouse(ClickHouseRebuild),
}

impl Rebuild {
    /// Applies a batch to the read models being rebuilt.
    pub async fn apply(&mut self, changes: Vec<RowChange>, dead_letters: Vec<DeadLetter>) -> Result<(), StoreError> {
        match self {
            Rebuild::Sqlite(rebuild) => rebuild.apply(changes, dead_letters).await,
            Rebuild::ClickHouse(rebuild) => rebuild.apply(changes, dead_letters).await,
        }
    }

    /// Records the log positions the rebuild reached and switches readers to it.
    pub async fn commit(self, positions: Positions) -> Result<(), StoreError> {
        match self {
            Rebuild::Sqlite(rebuild) => rebuild.commit(positions).await,
            Rebuild::ClickHouse(rebuild) => rebuild.commit(positions).await,
        }
    }
}
