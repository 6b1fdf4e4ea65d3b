//! The embedded projection store: SQLite (WAL) in the data folder. The projector applies a
//! batch of row changes and the log positions they reach in one transaction; the query role
//! reads through its own connections. Figures are computed with SQL over the folded tables,
//! with exact `count(DISTINCT …)`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agora_eventlog::Positions;
use agora_schemas::FiscalYear;
use anyhow::Context;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::changes::{DeadLetter, RowChange};
use crate::model::{every_kind, ConsultationFigures, ConsultationView, Coverage, FigureSet, MonthlyRaw, RawFigures, SuggestionFigures};
use crate::StoreError;

/// File name of the embedded store inside the data folder.
pub const FILE_NAME: &str = "store.sqlite";

const READERS: usize = 4;

/// Versioned DDL, applied in order and recorded in `schema_migrations`.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE log_positions (
        partition INTEGER PRIMARY KEY,
        next_offset INTEGER NOT NULL
    );
    CREATE TABLE consultations (
        consultation_id TEXT PRIMARY KEY,
        organization_id TEXT,
        opened_at_ms INTEGER,
        opened_event_id TEXT,
        fiscal_year INTEGER,
        title_fr TEXT,
        title_en TEXT,
        hosted_on TEXT,
        methods TEXT,
        digital INTEGER,
        closed_at_ms INTEGER,
        cancelled INTEGER NOT NULL DEFAULT 0,
        results_at_ms INTEGER
    );
    CREATE INDEX consultations_by_year ON consultations (fiscal_year, organization_id);
    CREATE TABLE consultation_fields (
        consultation_id TEXT NOT NULL,
        field TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        event_id TEXT NOT NULL,
        value TEXT NOT NULL,
        digital INTEGER,
        PRIMARY KEY (consultation_id, field)
    ) WITHOUT ROWID;
    CREATE VIEW consultation_state AS
    SELECT c.consultation_id, c.organization_id, c.fiscal_year, c.cancelled, c.closed_at_ms, c.results_at_ms,
        CASE WHEN tf.at_ms IS NOT NULL AND (tf.at_ms, tf.event_id) > (c.opened_at_ms, c.opened_event_id)
             THEN tf.value ELSE c.title_fr END AS title_fr,
        CASE WHEN te.at_ms IS NOT NULL AND (c.title_en IS NULL OR (te.at_ms, te.event_id) > (c.opened_at_ms, c.opened_event_id))
             THEN te.value ELSE c.title_en END AS title_en,
        CASE WHEN h.at_ms IS NOT NULL AND (h.at_ms, h.event_id) > (c.opened_at_ms, c.opened_event_id)
             THEN h.value ELSE c.hosted_on END AS hosted_on,
        CASE WHEN m.at_ms IS NOT NULL AND (m.at_ms, m.event_id) > (c.opened_at_ms, c.opened_event_id)
             THEN m.value ELSE c.methods END AS methods,
        CASE WHEN m.at_ms IS NOT NULL AND (m.at_ms, m.event_id) > (c.opened_at_ms, c.opened_event_id)
             THEN m.digital ELSE c.digital END AS digital
    FROM consultations c
    LEFT JOIN consultation_fields tf ON tf.consultation_id = c.consultation_id AND tf.field = 'title_fr'
    LEFT JOIN consultation_fields te ON te.consultation_id = c.consultation_id AND te.field = 'title_en'
    LEFT JOIN consultation_fields h ON h.consultation_id = c.consultation_id AND h.field = 'hosted_on'
    LEFT JOIN consultation_fields m ON m.consultation_id = c.consultation_id AND m.field = 'methods'
    WHERE c.opened_at_ms IS NOT NULL;
    CREATE TABLE contributions (
        contribution_id TEXT PRIMARY KEY,
        consultation_id TEXT NOT NULL,
        participant TEXT NOT NULL,
        kind TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        event_id TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX contributions_by_consultation ON contributions (consultation_id, participant);
    CREATE TABLE withdrawals (contribution_id TEXT PRIMARY KEY) WITHOUT ROWID;
    CREATE TABLE visits (
        consultation_id TEXT NOT NULL,
        participant TEXT NOT NULL,
        PRIMARY KEY (consultation_id, participant)
    ) WITHOUT ROWID;
    CREATE TABLE feedback (
        participant TEXT NOT NULL,
        scope TEXT NOT NULL,
        fiscal_year INTEGER NOT NULL,
        organization_id TEXT NOT NULL,
        satisfaction INTEGER NOT NULL,
        has_suggestion INTEGER NOT NULL,
        at_ms INTEGER NOT NULL,
        event_id TEXT NOT NULL,
        PRIMARY KEY (participant, scope, fiscal_year)
    ) WITHOUT ROWID;
    CREATE INDEX feedback_by_year ON feedback (fiscal_year, organization_id);
    CREATE TABLE triage (
        feedback_event_id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        event_id TEXT NOT NULL
    ) WITHOUT ROWID;
    -- Free text written by citizens: apart from the analytics tables, never in logs or metrics.
    CREATE TABLE suggestion_texts (
        feedback_event_id TEXT PRIMARY KEY,
        text TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE dead_letters (
        partition INTEGER NOT NULL,
        offset INTEGER NOT NULL,
        reason TEXT NOT NULL,
        payload BLOB NOT NULL,
        PRIMARY KEY (partition, offset)
    );",
    ),
    (
        2,
        "-- Bumped by every applied batch and rebuild: what the query role's cache is keyed on.
        CREATE TABLE store_version (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL);
        INSERT INTO store_version (id, version) VALUES (1, 0);",
    ),
];

/// The consultations of a fiscal year that count (opened, not cancelled), optionally for
/// one organization: `?1` fiscal year, `?2` organization or NULL.
const COUNTED_CONSULTATIONS: &str = "SELECT consultation_id FROM consultations
    WHERE opened_at_ms IS NOT NULL AND cancelled = 0 AND fiscal_year = ?1
      AND (?2 IS NULL OR organization_id = ?2)";

/// The embedded SQLite projection store.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

impl SqliteStore {
    /// Opens (creating and migrating if needed) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir).with_context(|| format!("failed to create data folder {}", data_dir.display()))?;
        let path = data_dir.join(FILE_NAME);
        let mut writer = connect(&path)?;
        migrate(&mut writer)?;
        let readers = (0..READERS).map(|_| connect(&path).map(Mutex::new)).collect::<anyhow::Result<_>>()?;
        Ok(SqliteStore { inner: Arc::new(Inner { path, writer: Mutex::new(writer), readers, next_reader: AtomicUsize::new(0) }) })
    }

    /// Returns the database file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub(crate) async fn apply(
        &self,
        changes: Vec<RowChange>,
        dead_letters: Vec<DeadLetter>,
        positions: Positions,
    ) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        run_blocking(move || {
            let mut conn = inner.writer.lock().expect("store writer lock");
            let tx = conn.transaction().context("failed to begin batch")?;
            for change in &changes {
                apply_change(&tx, change)?;
            }
            insert_dead_letters(&tx, &dead_letters)?;
            save_positions(&tx, &positions)?;
            crate::fail_point("store.before_commit");
            tx.commit().context("failed to commit batch")?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn positions(&self) -> Result<Positions, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached("SELECT partition, next_offset FROM log_positions")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<Positions, _>>()?)
        })
        .await
    }

    pub(crate) async fn version(&self) -> Result<i64, StoreError> {
        self.read(|conn| Ok(conn.prepare_cached("SELECT version FROM store_version WHERE id = 1")?.query_row([], |r| r.get(0))?)).await
    }

    pub(crate) async fn schema_version(&self) -> Result<u32, StoreError> {
        self.read(|conn| Ok(conn.query_row("SELECT coalesce(max(version), 0) FROM schema_migrations", [], |r| r.get(0))?)).await
    }

    pub(crate) async fn dead_letter_count(&self) -> Result<u64, StoreError> {
        self.read(|conn| Ok(conn.query_row("SELECT count(*) FROM dead_letters", [], |r| r.get::<_, i64>(0))? as u64)).await
    }

    pub(crate) async fn on_platform(&self, fiscal_year: FiscalYear, organization_id: Option<String>) -> Result<u64, StoreError> {
        self.read(move |conn| {
            let sql = format!(
                "SELECT count(*) FROM consultation_state WHERE hosted_on = 'platform'
                 AND consultation_id IN ({COUNTED_CONSULTATIONS})"
            );
            let n: i64 = conn.prepare_cached(&sql)?.query_row(params![fiscal_year.start_year(), organization_id], |r| r.get(0))?;
            Ok(n as u64)
        })
        .await
    }

    pub(crate) async fn raw_figures(&self, fiscal_year: FiscalYear, organization_id: Option<String>) -> Result<RawFigures, StoreError> {
        self.read(move |conn| raw_figures(conn, fiscal_year.start_year(), organization_id.as_deref())).await
    }

    /// Reads the raw figures of every fiscal year and scope in one read transaction, so that
    /// the version and every figure come from the same committed state.
    pub(crate) async fn figure_set(&self) -> Result<FigureSet, StoreError> {
        self.read(|conn| {
            let tx = conn.unchecked_transaction().context("failed to begin a read")?;
            let version = tx.prepare_cached("SELECT version FROM store_version WHERE id = 1")?.query_row([], |r| r.get(0))?;
            let coverage = coverage(&tx)?;
            let mut scopes = BTreeMap::new();
            for fiscal_year in coverage.fiscal_years {
                let organizations = std::iter::once(None).chain(coverage.organizations.iter().map(|o| Some(o.as_str())));
                for organization_id in organizations {
                    let raw = raw_figures(&tx, fiscal_year.start_year(), organization_id)?;
                    if raw != RawFigures::default() {
                        scopes.insert((fiscal_year, organization_id.map(str::to_owned)), raw);
                    }
                }
            }
            Ok(FigureSet { version, scopes })
        })
        .await
    }

    pub(crate) async fn coverage(&self) -> Result<Coverage, StoreError> {
        self.read(|conn| coverage(conn)).await
    }

    pub(crate) async fn monthly_raw(&self, fiscal_year: FiscalYear, organization_id: Option<String>) -> Result<MonthlyRaw, StoreError> {
        self.read(move |conn| {
            let args = params![fiscal_year.start_year(), organization_id];
            let openings_ms = conn
                .prepare_cached(&format!("SELECT opened_at_ms FROM consultations WHERE consultation_id IN ({COUNTED_CONSULTATIONS})"))?
                .query_map(args, |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let contributions = conn
                .prepare_cached(&format!(
                    "SELECT k.participant, k.at_ms FROM contributions k
                     WHERE k.consultation_id IN ({COUNTED_CONSULTATIONS})
                       AND NOT EXISTS (SELECT 1 FROM withdrawals w WHERE w.contribution_id = k.contribution_id)"
                ))?
                .query_map(args, |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let feedback = conn
                .prepare_cached("SELECT satisfaction, at_ms FROM feedback WHERE fiscal_year = ?1 AND (?2 IS NULL OR organization_id = ?2)")?
                .query_map(args, |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            Ok(MonthlyRaw { openings_ms, contributions, feedback })
        })
        .await
    }

    pub(crate) async fn consultation(&self, consultation_id: String) -> Result<Option<ConsultationView>, StoreError> {
        self.read(move |conn| consultation(conn, &consultation_id)).await
    }

    /// Starts rebuilding the read models: a dedicated connection takes the write lock, empties
    /// every read-model table and applies what [`SqliteRebuild::apply`] sends, all in one
    /// transaction. Readers keep seeing the old figures until [`SqliteRebuild::commit`], then
    /// the new ones: never a partial state. Live projectors wait (and retry) meanwhile.
    pub(crate) async fn begin_rebuild(&self) -> Result<SqliteRebuild, StoreError> {
        let path = self.inner.path.clone();
        let (ops, incoming) = std::sync::mpsc::sync_channel::<RebuildOp>(2);
        let (started_tx, started) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
        let (done_tx, done) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
        std::thread::Builder::new()
            .name("agora-store-rebuild".into())
            .spawn(move || {
                let mut conn = match connect(&path) {
                    Ok(conn) => conn,
                    Err(error) => {
                        let _ = started_tx.send(Err(error));
                        return;
                    }
                };
                let begun = conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .context("failed to take the store's write lock for a rebuild")
                    .and_then(|tx| {
                        tx.execute_batch(
                            "DELETE FROM consultations; DELETE FROM consultation_fields; DELETE FROM contributions;
                             DELETE FROM withdrawals; DELETE FROM visits; DELETE FROM feedback; DELETE FROM triage;
                             DELETE FROM suggestion_texts; DELETE FROM dead_letters; DELETE FROM log_positions;",
                        )
                        .context("failed to empty the read models")?;
                        Ok(tx)
                    });
                let tx = match begun {
                    Ok(tx) => {
                        let _ = started_tx.send(Ok(()));
                        tx
                    }
                    Err(error) => {
                        let _ = started_tx.send(Err(error));
                        return;
                    }
                };
                let outcome = (|| -> anyhow::Result<()> {
                    while let Ok(op) = incoming.recv() {
                        match op {
                            RebuildOp::Apply(changes, dead_letters) => {
                                for change in &changes {
                                    apply_change(&tx, change)?;
                                }
                                insert_dead_letters(&tx, &dead_letters)?;
                            }
                            RebuildOp::Commit(positions) => {
                                save_positions(&tx, &positions)?;
                                tx.commit().context("failed to commit the rebuild")?;
                                return Ok(());
                            }
                        }
                    }
                    Err(anyhow::anyhow!("rebuild abandoned before its commit; the old read models stay"))
                })();
                let _ = done_tx.send(outcome);
            })
            .context("failed to start the rebuild thread")?;
        started.await.map_err(|_| StoreError::Unexpected(anyhow::anyhow!("rebuild thread died")))?.map_err(StoreError::Unavailable)?;
        Ok(SqliteRebuild { ops, done })
    }

    /// Runs a read on one of the reader connections, off the async runtime.
    async fn read<T: Send + 'static>(&self, work: impl FnOnce(&Connection) -> anyhow::Result<T> + Send + 'static) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        run_blocking(move || {
            let i = inner.next_reader.fetch_add(1, Ordering::Relaxed) % inner.readers.len();
            let conn = inner.readers[i].lock().expect("store reader lock");
            work(&conn)
        })
        .await
    }
}

/// A rebuild in progress; see [`SqliteStore::begin_rebuild`]. Dropped without a commit, it
/// rolls back and the old read models stay.
pub struct SqliteRebuild {
    ops: std::sync::mpsc::SyncSender<RebuildOp>,
    done: tokio::sync::oneshot::Receiver<anyhow::Result<()>>,
}

enum RebuildOp {
    Apply(Vec<RowChange>, Vec<DeadLetter>),
    Commit(Positions),
}

impl SqliteRebuild {
    /// Applies a batch inside the rebuild's transaction.
    pub(crate) async fn apply(&mut self, changes: Vec<RowChange>, dead_letters: Vec<DeadLetter>) -> Result<(), StoreError> {
        self.send(RebuildOp::Apply(changes, dead_letters)).await
    }

    /// Records `positions` and commits: the rebuilt read models replace the old ones at once.
    pub(crate) async fn commit(mut self, positions: Positions) -> Result<(), StoreError> {
        self.send(RebuildOp::Commit(positions)).await?;
        (&mut self.done).await.map_err(|_| StoreError::Unexpected(anyhow::anyhow!("rebuild thread died")))?.map_err(StoreError::Unexpected)
    }

    async fn send(&mut self, op: RebuildOp) -> Result<(), StoreError> {
        let ops = self.ops.clone();
        let sent = tokio::task::spawn_blocking(move || ops.send(op).is_ok()).await.unwrap_or(false);
        if sent {
            return Ok(());
        }
        // The thread stopped: its own error says why.
        match (&mut self.done).await {
            Ok(Err(error)) => Err(StoreError::Unexpected(error)),
            _ => Err(StoreError::Unexpected(anyhow::anyhow!("rebuild thread died"))),
        }
    }
}

fn insert_dead_letters(tx: &Transaction<'_>, dead_letters: &[DeadLetter]) -> anyhow::Result<()> {
    for letter in dead_letters {
        tx.prepare_cached("INSERT OR IGNORE INTO dead_letters (partition, offset, reason, payload) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![letter.partition, letter.offset, letter.reason, letter.payload])?;
    }
    Ok(())
}

fn save_positions(tx: &Transaction<'_>, positions: &Positions) -> anyhow::Result<()> {
    tx.prepare_cached("UPDATE store_version SET version = version + 1 WHERE id = 1")?.execute([])?;
    for (partition, next_offset) in positions {
        tx.prepare_cached(
            "INSERT INTO log_positions (partition, next_offset) VALUES (?1, ?2)
             ON CONFLICT (partition) DO UPDATE SET next_offset = excluded.next_offset",
        )?
        .execute(params![partition, next_offset])?;
    }
    Ok(())
}

fn connect(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("failed to open projection store {}", path.display()))?;
    agora_eventlog::sqlite::use_wal(&conn, Duration::from_secs(10)).context("failed to switch the store to WAL")?;
    // NORMAL: a power cut may lose the last batches, positions included, and the
    // projector folds them again from the log, which is the durable truth.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "cache_size", -65_536)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL DEFAULT (datetime('now')))",
    )?;
    for (version, ddl) in MIGRATIONS {
        // IMMEDIATE: the write lock is taken (waiting out the busy timeout) before reading
        // the version, so processes starting together on a fresh store migrate one at a time
        // instead of failing on a deferred lock upgrade.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let applied: Option<i64> =
            tx.query_row("SELECT version FROM schema_migrations WHERE version = ?1", [version], |r| r.get(0)).optional()?;
        if applied.is_none() {
            tx.execute_batch(ddl).with_context(|| format!("failed to apply store migration {version}"))?;
            tx.execute("INSERT INTO schema_migrations (version) VALUES (?1)", [version])?;
        }
        tx.commit()?;
    }
    Ok(())
}

fn apply_change(tx: &Transaction<'_>, change: &RowChange) -> anyhow::Result<()> {
    match change {
        RowChange::Opening {
            consultation_id,
            organization_id,
            at_ms,
            event_id,
            fiscal_year,
            title_fr,
            title_en,
            hosted_on,
            methods,
            digital,
        } => {
            tx.prepare_cached(
                "INSERT INTO consultations (consultation_id, organization_id, opened_at_ms, opened_event_id, fiscal_year,
                     title_fr, title_en, hosted_on, methods, digital)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (consultation_id) DO UPDATE SET
                     organization_id = excluded.organization_id, opened_at_ms = excluded.opened_at_ms,
                     opened_event_id = excluded.opened_event_id, fiscal_year = excluded.fiscal_year,
                     title_fr = excluded.title_fr, title_en = excluded.title_en, hosted_on = excluded.hosted_on,
                     methods = excluded.methods, digital = excluded.digital
                 WHERE consultations.opened_at_ms IS NULL
                    OR (excluded.opened_at_ms, excluded.opened_event_id) < (consultations.opened_at_ms, consultations.opened_event_id)",
            )?
            .execute(params![
                consultation_id,
                organization_id,
                at_ms,
                event_id,
                fiscal_year.start_year(),
                title_fr,
                title_en,
                hosted_on,
                serde_json::to_string(methods)?,
                digital
            ])?;
        }
        RowChange::FieldSet { consultation_id, field, at_ms, event_id, value, digital } => {
            tx.prepare_cached(
                "INSERT INTO consultation_fields (consultation_id, field, at_ms, event_id, value, digital)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (consultation_id, field) DO UPDATE SET
                     at_ms = excluded.at_ms, event_id = excluded.event_id, value = excluded.value, digital = excluded.digital
                 WHERE (excluded.at_ms, excluded.event_id) > (consultation_fields.at_ms, consultation_fields.event_id)",
            )?
            .execute(params![consultation_id, field.name(), at_ms, event_id, value, digital])?;
        }
        RowChange::Closed { consultation_id, at_ms } => {
            tx.prepare_cached(
                "INSERT INTO consultations (consultation_id, closed_at_ms) VALUES (?1, ?2)
                 ON CONFLICT (consultation_id) DO UPDATE SET
                     closed_at_ms = min(coalesce(consultations.closed_at_ms, excluded.closed_at_ms), excluded.closed_at_ms)",
            )?
            .execute(params![consultation_id, at_ms])?;
        }
        RowChange::Cancelled { consultation_id } => {
            tx.prepare_cached(
                "INSERT INTO consultations (consultation_id, cancelled) VALUES (?1, 1)
                 ON CONFLICT (consultation_id) DO UPDATE SET cancelled = 1",
            )?
            .execute(params![consultation_id])?;
        }
        RowChange::ResultsPublished { consultation_id, at_ms } => {
            tx.prepare_cached(
                "INSERT INTO consultations (consultation_id, results_at_ms) VALUES (?1, ?2)
                 ON CONFLICT (consultation_id) DO UPDATE SET
                     results_at_ms = min(coalesce(consultations.results_at_ms, excluded.results_at_ms), excluded.results_at_ms)",
            )?
            .execute(params![consultation_id, at_ms])?;
        }
        RowChange::Visit { consultation_id, participant } => {
            tx.prepare_cached("INSERT OR IGNORE INTO visits (consultation_id, participant) VALUES (?1, ?2)")?
                .execute(params![consultation_id, participant])?;
        }
        RowChange::Contribution { contribution_id, consultation_id, participant, kind, at_ms, event_id } => {
            tx.prepare_cached(
                "INSERT INTO contributions (contribution_id, consultation_id, participant, kind, at_ms, event_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (contribution_id) DO UPDATE SET
                     consultation_id = excluded.consultation_id, participant = excluded.participant,
                     kind = excluded.kind, at_ms = excluded.at_ms, event_id = excluded.event_id
                 WHERE (excluded.at_ms, excluded.event_id) < (contributions.at_ms, contributions.event_id)",
            )?
            .execute(params![contribution_id, consultation_id, participant, kind, at_ms, event_id])?;
        }
        RowChange::Withdrawal { contribution_id } => {
            tx.prepare_cached("INSERT OR IGNORE INTO withdrawals (contribution_id) VALUES (?1)")?.execute(params![contribution_id])?;
        }
        RowChange::Feedback { participant, scope, fiscal_year, organization_id, satisfaction, has_suggestion, at_ms, event_id } => {
            tx.prepare_cached(
                "INSERT INTO feedback (participant, scope, fiscal_year, organization_id, satisfaction, has_suggestion, at_ms, event_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (participant, scope, fiscal_year) DO UPDATE SET
                     organization_id = excluded.organization_id, satisfaction = excluded.satisfaction,
                     has_suggestion = excluded.has_suggestion, at_ms = excluded.at_ms, event_id = excluded.event_id
                 WHERE (excluded.at_ms, excluded.event_id) > (feedback.at_ms, feedback.event_id)",
            )?
            .execute(params![
                participant,
                scope,
                fiscal_year.start_year(),
                organization_id,
                satisfaction,
                has_suggestion,
                at_ms,
                event_id
            ])?;
        }
        RowChange::SuggestionText { feedback_event_id, text } => {
            tx.prepare_cached("INSERT OR IGNORE INTO suggestion_texts (feedback_event_id, text) VALUES (?1, ?2)")?
                .execute(params![feedback_event_id, text])?;
        }
        RowChange::Triage { feedback_event_id, status, at_ms, event_id } => {
            tx.prepare_cached(
                "INSERT INTO triage (feedback_event_id, status, at_ms, event_id) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (feedback_event_id) DO UPDATE SET
                     status = excluded.status, at_ms = excluded.at_ms, event_id = excluded.event_id
                 WHERE (excluded.at_ms, excluded.event_id) > (triage.at_ms, triage.event_id)",
            )?
            .execute(params![feedback_event_id, status, at_ms, event_id])?;
        }
    }
    Ok(())
}

/// Returns the organizations and fiscal years that have an opened consultation or feedback.
fn coverage(conn: &Connection) -> anyhow::Result<Coverage> {
    let organizations = conn
        .prepare_cached(
            "SELECT organization_id FROM consultations WHERE opened_at_ms IS NOT NULL
             UNION SELECT organization_id FROM feedback ORDER BY 1",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let years: Vec<i32> = conn
        .prepare_cached(
            "SELECT fiscal_year FROM consultations WHERE opened_at_ms IS NOT NULL
             UNION SELECT fiscal_year FROM feedback ORDER BY 1",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(Coverage { organizations, fiscal_years: years.into_iter().map(FiscalYear::starting_in).collect() })
}

fn raw_figures(conn: &Connection, fiscal_year: i32, organization_id: Option<&str>) -> anyhow::Result<RawFigures> {
    let args = params![fiscal_year, organization_id];
    let consultations = conn
        .prepare_cached(&format!(
            "SELECT count(*),
                    coalesce(sum(hosted_on = 'platform'), 0),
                    coalesce(sum(hosted_on = 'third_party'), 0),
                    coalesce(sum(digital), 0),
                    coalesce(sum(closed_at_ms IS NOT NULL), 0),
                    coalesce(sum(closed_at_ms IS NOT NULL AND results_at_ms IS NOT NULL), 0)
             FROM consultation_state WHERE consultation_id IN ({COUNTED_CONSULTATIONS})"
        ))?
        .query_row(args, |r| {
            Ok(ConsultationFigures {
                opened: r.get::<_, i64>(0)? as u64,
                on_platform: r.get::<_, i64>(1)? as u64,
                third_party: r.get::<_, i64>(2)? as u64,
                with_digital_participation: r.get::<_, i64>(3)? as u64,
                closed: r.get::<_, i64>(4)? as u64,
                with_results_published: r.get::<_, i64>(5)? as u64,
            })
        })?;

    let result_delays_ms = conn
        .prepare_cached(&format!(
            "SELECT results_at_ms - closed_at_ms FROM consultations
             WHERE closed_at_ms IS NOT NULL AND results_at_ms IS NOT NULL AND consultation_id IN ({COUNTED_CONSULTATIONS})"
        ))?
        .query_map(args, |r| r.get(0))?
        .collect::<Result<Vec<i64>, _>>()?;

    let counted = format!(
        "SELECT k.participant, k.kind FROM contributions k
         WHERE k.consultation_id IN ({COUNTED_CONSULTATIONS})
           AND NOT EXISTS (SELECT 1 FROM withdrawals w WHERE w.contribution_id = k.contribution_id)"
    );
    let contributions_by_kind = conn
        .prepare_cached(&format!("SELECT kind, count(*) FROM ({counted}) GROUP BY kind"))?
        .query_map(args, |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?
        .collect::<Result<_, _>>()?;
    let unique_participants: i64 =
        conn.prepare_cached(&format!("SELECT count(DISTINCT participant) FROM ({counted})"))?.query_row(args, |r| r.get(0))?;

    let (visitors, converted_visitors): (i64, i64) = conn
        .prepare_cached(&format!(
            "WITH visitors AS (
                 SELECT DISTINCT participant FROM visits WHERE consultation_id IN ({COUNTED_CONSULTATIONS})
             )
             SELECT count(*), coalesce(sum(participant IN (SELECT participant FROM ({counted}))), 0) FROM visitors"
        ))?
        .query_row(args, |r| Ok((r.get(0)?, r.get(1)?)))?;

    let (responses, satisfaction_sum, satisfied, received, answered, implemented): (i64, i64, i64, i64, i64, i64) = conn
        .prepare_cached(
            "SELECT count(*), coalesce(sum(f.satisfaction), 0), coalesce(sum(f.satisfaction >= 4), 0),
                    coalesce(sum(f.has_suggestion), 0),
                    coalesce(sum(f.has_suggestion AND t.feedback_event_id IS NOT NULL), 0),
                    coalesce(sum(f.has_suggestion AND t.status = 'implemented'), 0)
             FROM feedback f LEFT JOIN triage t ON t.feedback_event_id = f.event_id
             WHERE f.fiscal_year = ?1 AND (?2 IS NULL OR f.organization_id = ?2)",
        )?
        .query_row(args, |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))?;

    Ok(RawFigures {
        consultations,
        unique_participants: unique_participants as u64,
        contributions_by_kind,
        visitors: visitors as u64,
        converted_visitors: converted_visitors as u64,
        satisfaction_responses: responses as u64,
        satisfaction_sum: satisfaction_sum as u64,
        satisfied: satisfied as u64,
        result_delays_ms,
        suggestions: SuggestionFigures { received: received as u64, answered: answered as u64, implemented: implemented as u64 },
    })
}

fn consultation(conn: &Connection, consultation_id: &str) -> anyhow::Result<Option<ConsultationView>> {
    let state = conn
        .prepare_cached(
            "SELECT organization_id, fiscal_year, cancelled, closed_at_ms IS NOT NULL, results_at_ms IS NOT NULL,
                    title_fr, title_en, hosted_on, methods, digital
             FROM consultation_state WHERE consultation_id = ?1",
        )?
        .query_row([consultation_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i32>(1)?,
                r.get::<_, bool>(2)?,
                r.get::<_, bool>(3)?,
                r.get::<_, bool>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, Option<String>>(6)?,
                r.get::<_, String>(7)?,
                r.get::<_, String>(8)?,
                r.get::<_, bool>(9)?,
            ))
        })
        .optional()?;
    let Some((organization_id, fiscal_year, cancelled, closed, results_published, title_fr, title_en, hosted_on, methods, digital)) = state
    else {
        return Ok(None);
    };
    let counted = "SELECT participant, kind FROM contributions k WHERE k.consultation_id = ?1
                   AND NOT EXISTS (SELECT 1 FROM withdrawals w WHERE w.contribution_id = k.contribution_id)";
    let by_kind = conn
        .prepare_cached(&format!("SELECT kind, count(*) FROM ({counted}) GROUP BY kind"))?
        .query_map([consultation_id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?
        .collect::<Result<_, _>>()?;
    let unique_participants: i64 =
        conn.prepare_cached(&format!("SELECT count(DISTINCT participant) FROM ({counted})"))?.query_row([consultation_id], |r| r.get(0))?;
    let visitors: i64 =
        conn.prepare_cached("SELECT count(*) FROM visits WHERE consultation_id = ?1")?.query_row([consultation_id], |r| r.get(0))?;
    let contributions_by_kind = every_kind(by_kind);
    Ok(Some(ConsultationView {
        consultation_id: consultation_id.to_owned(),
        organization_id,
        fiscal_year: FiscalYear::starting_in(fiscal_year),
        status: if cancelled {
            "cancelled"
        } else if closed {
            "closed"
        } else {
            "open"
        }
        .to_owned(),
        title_fr,
        title_en,
        hosted_on,
        methods: serde_json::from_str(&methods).context("failed to read stored methods")?,
        offers_digital_participation: digital,
        unique_participants: unique_participants as u64,
        contributions: contributions_by_kind.values().sum(),
        contributions_by_kind,
        visitors: visitors as u64,
        results_published,
    }))
}

async fn run_blocking<T: Send + 'static>(work: impl FnOnce() -> anyhow::Result<T> + Send + 'static) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::Unexpected(anyhow::anyhow!("store task failed: {e}")))?
        .map_err(StoreError::Unavailable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_opening_a_fresh_store_together_all_migrate_it() {
        let dir = tempfile::tempdir().unwrap();
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let openers: Vec<_> = (0..4)
            .map(|_| {
                let (path, barrier) = (dir.path().to_path_buf(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    SqliteStore::open(&path).map(|_| ()).map_err(|e| format!("{e:#}"))
                })
            })
            .collect();
        for opener in openers {
            assert_eq!(opener.join().unwrap(), Ok(()));
        }
        let conn = Connection::open(dir.path().join(FILE_NAME)).unwrap();
        let versions: i64 = conn.query_row("SELECT count(*) FROM schema_migrations", [], |r| r.get(0)).unwrap();
        assert_eq!(versions, MIGRATIONS.len() as i64);
    }
}
