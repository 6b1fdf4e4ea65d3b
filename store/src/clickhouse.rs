//! The production projection store: ClickHouse, through the official `clickhouse` crate
//! (RowBinary over HTTP). The projector inserts the row changes of a batch as plain rows;
//! the query role reads figures with SQL that folds those rows again at read time.
//!
//! - **Effectively-once without transactions.** ClickHouse cannot apply a batch and a log
//!   position atomically, so it does not try: every row change is stored as an immutable row
//!   and every read aggregates rows with idempotent functions (the earliest or the latest by
//!   `(at_ms, event_id)`, `uniqExact`, presence flags). A batch inserted twice, in part or in
//!   full, gives the same figures as once. `ReplacingMergeTree` folds identical rows away in
//!   the background; reads never depend on it.
//! - **Generations.** Every table is partitioned by `generation`. Readers use the newest
//!   generation marked active in `generations`. A rebuild writes a fresh generation (live
//!   projectors write to it too), marks it active when complete — one insert, so readers
//!   switch at once — and drops the generations before the one it replaced. ClickHouse 18.16
//!   has no `EXCHANGE TABLES`; this needs only `ALTER TABLE … DROP PARTITION`.
//! - **Versions.** `batches` gets one row per applied batch; the read models' version is the
//!   active generation and its batch count, which is what query caches are keyed on.
//! - **SQL** keeps to what both 18.16 and current releases accept (../shared/DESIGN.md): one
//!   `JOIN` per `SELECT`, no `Nullable` columns, aliases that never shadow a column. Values
//!   that come from callers are bound; the generation, a number the store read itself, is
//!   formatted into the text.

use std::collections::BTreeMap;
use std::time::Duration;

use agora_eventlog::Positions;
use agora_schemas::rules::CONTRIBUTION_KINDS;
use agora_schemas::FiscalYear;
use anyhow::{anyhow, Context};
use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::changes::{DeadLetter, RowChange};
use crate::model::{every_kind, ConsultationFigures, ConsultationView, Coverage, FigureSet, MonthlyRaw, RawFigures, SuggestionFigures};
use crate::StoreError;

/// How to reach the server.
#[derive(Debug, Clone, PartialEq)]
pub struct ClickHouseSettings {
    pub url: String,
    pub database: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Longest wait for one statement.
    pub timeout: Duration,
    /// Longest wait for one fold of every scope (the figure snapshot's three grouped reads,
    /// each folding every row change of the generation).
    pub fold_timeout: Duration,
    /// Memory one fold's aggregation may hold before it spills to disk
    /// (`max_bytes_before_external_group_by`); twice this is its hard limit
    /// (`max_memory_usage`), so that a fold fails alone rather than the server running out
    /// of memory.
    pub fold_memory_bytes: u64,
}

/// Generation states in `generations.state`.
const BUILDING: u8 = 1;
const ACTIVE: u8 = 2;

/// Every table holding read-model rows, all partitioned by generation.
pub const TABLES: &[&str] = &[
    "consultation_openings",
    "consultation_marks",
    "consultation_fields",
    "contributions",
    "withdrawals",
    "visits",
    "feedback",
    "triage",
    "suggestion_texts",
    "dead_letters",
    "log_positions",
    "batches",
];

/// Versioned DDL, applied in order and recorded in `schema_migrations`. Each statement is
/// idempotent, so processes migrating together do no harm.
const MIGRATIONS: &[(u32, &[&str])] = &[(
    1,
    &[
        "CREATE TABLE IF NOT EXISTS generations (generation UInt32, state UInt8, at DateTime DEFAULT now())
         ENGINE = ReplacingMergeTree() ORDER BY (generation, state)",
        "INSERT INTO generations (generation, state) VALUES (1, 2)",
        "CREATE TABLE IF NOT EXISTS consultation_openings (
             generation UInt32, consultation_id String, organization_id String, at_ms Int64, event_id String,
             fiscal_year Int32, title_fr String, has_title_en UInt8, title_en String, hosted_on String,
             methods String, digital UInt8
         ) ENGINE = ReplacingMergeTree() PARTITION BY generation ORDER BY (generation, consultation_id, at_ms, event_id)",
        "CREATE TABLE IF NOT EXISTS consultation_marks (
             generation UInt32, consultation_id String, mark Enum8('closed' = 1, 'cancelled' = 2, 'results' = 3), at_ms Int64
         ) ENGINE = ReplacingMergeTree() PARTITION BY generation ORDER BY (generation, consultation_id, mark, at_ms)",
        "CREATE TABLE IF NOT EXISTS consultation_fields (
             generation UInt32, consultation_id String, field String, at_ms Int64, event_id String, value String, digital UInt8
         ) ENGINE = ReplacingMergeTree() PARTITION BY generation ORDER BY (generation, consultation_id, field, at_ms, event_id)",
        "CREATE TABLE IF NOT EXISTS contributions (
             generation UInt32, contribution_id String, consultation_id String, participant String, kind String,
             at_ms Int64, event_id String
         ) ENGINE = ReplacingMergeTree() PARTITION BY generation ORDER BY (generation, contribution_id, at_ms, event_id)",
        "CREATE TABLE IF NOT EXISTS withdrawals (generation UInt32, contribution_id String)
         ENGINE = ReplacingMergeTree() PARTITION BY generation ORDER BY (generation, contribution_id)",
        "CREATE TABLE IF NOT EXISTS visits (generation UInt32, consultation_id String, participant String)
         ENGINE = ReplacingMergeTree() PARTITION BY generation ORDER BY (generation, consultation_id, participant)",
        "CREATE TABLE IF NOT EXISTS feedback (
             generation UInt32, participant String, scope String, fiscal_year Int32, organization_id String,
             satisfaction UInt8, has_suggestion UInt8, at_ms Int64, event_id String
         ) ENGINE = ReplacingMergeTree() PARTITION BY generation
           ORDER BY (generation, fiscal_year, participant, scope, at_ms, event_id)",
        "CREATE TABLE IF NOT EXISTS triage (generation UInt32, feedback_event_id String, status String, at_ms Int64, event_id String)
         ENGINE = ReplacingMergeTree() PARTITION BY generation ORDER BY (generation, feedback_event_id, at_ms, event_id)",
        // Free text written by citizens: apart from the analytics tables, never in logs or metrics.
        "CREATE TABLE IF NOT EXISTS suggestion_texts (generation UInt32, feedback_event_id String, text String)
         ENGINE = ReplacingMergeTree() PARTITION BY generation ORDER BY (generation, feedback_event_id)",
        "CREATE TABLE IF NOT EXISTS dead_letters (generation UInt32, partition Int32, offset Int64, reason String, payload String)
         ENGINE = ReplacingMergeTree() PARTITION BY generation ORDER BY (generation, partition, offset)",
        "CREATE TABLE IF NOT EXISTS log_positions (generation UInt32, partition Int32, next_offset Int64)
         ENGINE = ReplacingMergeTree() PARTITION BY generation ORDER BY (generation, partition, next_offset)",
        // One row per applied batch, never merged away: the read models' version counts them.
        "CREATE TABLE IF NOT EXISTS batches (generation UInt32, at DateTime DEFAULT now(), rows UInt64)
         ENGINE = MergeTree() PARTITION BY generation ORDER BY (generation, at)",
    ],
)];

#[derive(Row, Serialize)]
struct OpeningRow<'a> {
    generation: u32,
    consultation_id: &'a str,
    organization_id: &'a str,
    at_ms: i64,
    event_id: &'a str,
    fiscal_year: i32,
    title_fr: &'a str,
    has_title_en: u8,
    title_en: &'a str,
    hosted_on: &'a str,
    methods: String,
    digital: u8,
}

#[derive(Row, Serialize)]
struct MarkRow<'a> {
    generation: u32,
    consultation_id: &'a str,
    /// The `Enum8` code: 1 closed, 2 cancelled, 3 results.
    mark: i8,
    at_ms: i64,
}

#[derive(Row, Serialize)]
struct FieldRow<'a> {
    generation: u32,
    consultation_id: &'a str,
    field: &'a str,
    at_ms: i64,
    event_id: &'a str,
    value: &'a str,
    digital: u8,
}

#[derive(Row, Serialize)]
struct ContributionRow<'a> {
    generation: u32,
    contribution_id: &'a str,
    consultation_id: &'a str,
    participant: &'a str,
    kind: &'a str,
    at_ms: i64,
    event_id: &'a str,
}

#[derive(Row, Serialize)]
struct WithdrawalRow<'a> {
    generation: u32,
    contribution_id: &'a str,
}

#[derive(Row, Serialize)]
struct VisitRow<'a> {
    generation: u32,
    consultation_id: &'a str,
    participant: &'a str,
}

#[derive(Row, Serialize)]
struct FeedbackRow<'a> {
    generation: u32,
    participant: &'a str,
    scope: &'a str,
    fiscal_year: i32,
    organization_id: &'a str,
    satisfaction: u8,
    has_suggestion: u8,
    at_ms: i64,
    event_id: &'a str,
}

#[derive(Row, Serialize)]
struct TriageRow<'a> {
    generation: u32,
    feedback_event_id: &'a str,
    status: &'a str,
    at_ms: i64,
    event_id: &'a str,
}

#[derive(Row, Serialize)]
struct SuggestionTextRow<'a> {
    generation: u32,
    feedback_event_id: &'a str,
    text: &'a str,
}

#[derive(Row, Serialize)]
struct DeadLetterRow<'a> {
    generation: u32,
    partition: i32,
    offset: i64,
    reason: &'a str,
    #[serde(with = "serde_bytes")]
    payload: &'a [u8],
}

#[derive(Row, Serialize)]
struct PositionRow {
    generation: u32,
    partition: i32,
    next_offset: i64,
}

#[derive(Row, Serialize)]
struct BatchRow {
    generation: u32,
    rows: u64,
}

/// A row of [`ClickHouseStore::consultation_groups`]; `scope` is the organization, or `''`
/// for the whole government.
#[derive(Row, Deserialize)]
struct ConsultationGroup {
    fiscal_year: i32,
    scope: String,
    opened: u64,
    on_platform: u64,
    third_party: u64,
    with_digital_participation: u64,
    closed: u64,
    with_results_published: u64,
    result_delays_ms: Vec<i64>,
}

/// A row of [`ClickHouseStore::participation_groups`].
#[derive(Row, Deserialize)]
struct ParticipationGroup {
    fiscal_year: i32,
    scope: String,
    contributors: u64,
    visitors: u64,
    /// Contributors or visitors.
    either: u64,
    /// Contributions by 1-based place of the kind in `CONTRIBUTION_KINDS`.
    kinds: (Vec<u64>, Vec<u64>),
}

/// A row of [`ClickHouseStore::feedback_groups`].
#[derive(Row, Deserialize)]
struct FeedbackGroup {
    fiscal_year: i32,
    scope: String,
    responses: u64,
    satisfaction_sum: u64,
    satisfied: u64,
    received: u64,
    answered: u64,
    implemented: u64,
}

/// The ClickHouse projection store.
#[derive(Clone)]
pub struct ClickHouseStore {
    client: Client,
    timeout: Duration,
    fold_timeout: Duration,
    fold_memory_bytes: u64,
}

impl ClickHouseStore {
    /// Connects, creating the database and applying migrations when needed.
    pub async fn open(settings: &ClickHouseSettings) -> Result<Self, StoreError> {
        // 18.16 understands neither the typed RowBinary header of validation nor the crate's
        // LZ4 framing (it answers an empty body), so both stay off.
        let mut server = Client::default().with_url(&settings.url).with_validation(false).with_compression(clickhouse::Compression::None);
        if let Some(user) = &settings.user {
            server = server.with_user(user);
        }
        if let Some(password) = &settings.password {
            server = server.with_password(password);
        }
        let store = ClickHouseStore {
            client: server.clone(),
            timeout: settings.timeout,
            fold_timeout: settings.fold_timeout,
            fold_memory_bytes: settings.fold_memory_bytes,
        };
        store
            .run(server.query("CREATE DATABASE IF NOT EXISTS ?").bind(clickhouse::sql::Identifier(&settings.database)).execute())
            .await
            .map_err(|e| context(e, "failed to create the clickhouse database"))?;
        let store = ClickHouseStore { client: server.with_database(&settings.database), ..store };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies every migration not yet recorded; returns the latest version.
    async fn migrate(&self) -> Result<u32, StoreError> {
        self.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, applied_at DateTime DEFAULT now())
             ENGINE = ReplacingMergeTree() ORDER BY version",
        )
        .await?;
        let applied: Vec<u32> = self.fetch_all(self.client.query("SELECT DISTINCT version FROM schema_migrations")).await?;
        for (version, statements) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            for statement in *statements {
                self.execute(statement).await.map_err(|e| context(e, &format!("failed to apply store migration {version}")))?;
            }
            self.run(self.client.query("INSERT INTO schema_migrations (version) VALUES (?)").bind(version).execute()).await?;
            info!(version, "clickhouse store migrated");
        }
        Ok(MIGRATIONS.last().map_or(0, |(v, _)| *v))
    }

    pub(crate) async fn apply(
        &self,
        changes: Vec<RowChange>,
        dead_letters: Vec<DeadLetter>,
        positions: Positions,
    ) -> Result<(), StoreError> {
        for generation in self.write_generations().await? {
            self.insert_batch(generation, &changes, &dead_letters, &positions).await?;
        }
        crate::fail_point("store.after_insert");
        Ok(())
    }

    pub(crate) async fn positions(&self) -> Result<Positions, StoreError> {
        let g = self.active_generation().await?;
        let rows: Vec<(i32, i64)> = self
            .fetch_all(
                self.client
                    .query(&format!("SELECT partition, max(next_offset) FROM log_positions WHERE generation = {g} GROUP BY partition")),
            )
            .await?;
        Ok(rows.into_iter().collect())
    }

    pub(crate) async fn version(&self) -> Result<i64, StoreError> {
        let g = self.active_generation().await?;
        self.version_of(g).await
    }

    /// Returns the version of generation `g`: the generation and its batch count.
    async fn version_of(&self, g: u32) -> Result<i64, StoreError> {
        let batches: u64 = self.fetch_one(self.client.query(&format!("SELECT count() FROM batches WHERE generation = {g}"))).await?;
        Ok(((g as i64) << 40) | batches as i64)
    }

    pub(crate) async fn schema_version(&self) -> Result<u32, StoreError> {
        self.fetch_one(self.client.query("SELECT max(version) FROM schema_migrations")).await
    }

    pub(crate) async fn dead_letter_count(&self) -> Result<u64, StoreError> {
        let g = self.active_generation().await?;
        self.fetch_one(self.client.query(&format!("SELECT uniqExact(partition, offset) FROM dead_letters WHERE generation = {g}"))).await
    }

    /// Returns the raw figures of every fiscal year and scope, folded at read time from one
    /// generation: three grouped reads (consultations, participation, feedback), each one scan
    /// of its tables. Each row goes to its organization's group and to the government's
    /// (`arrayJoin([organization, ''])`), so distinct counts stay exact in both. The reads run
    /// one after the other, each within the fold limits ([`ClickHouseSettings`]): together,
    /// 18.16 held 18 GB for them at 7M events and its server was killed for lack of memory.
    pub(crate) async fn figure_set(&self) -> Result<FigureSet, StoreError> {
        let g = self.active_generation().await?;
        let version = self.version_of(g).await?;
        let consultations = self.consultation_groups(g).await?;
        let participation = self.participation_groups(g).await?;
        let feedback = self.feedback_groups(g).await?;
        let mut scopes: BTreeMap<(FiscalYear, Option<String>), RawFigures> = BTreeMap::new();
        let scope = |year: i32, organization: String| (FiscalYear::starting_in(year), Some(organization).filter(|o| !o.is_empty()));
        for row in consultations {
            let raw = scopes.entry(scope(row.fiscal_year, row.scope)).or_default();
            raw.consultations = ConsultationFigures {
                opened: row.opened,
                on_platform: row.on_platform,
                third_party: row.third_party,
                with_digital_participation: row.with_digital_participation,
                closed: row.closed,
                with_results_published: row.with_results_published,
            };
            raw.result_delays_ms = row.result_delays_ms;
        }
        for row in participation {
            let raw = scopes.entry(scope(row.fiscal_year, row.scope)).or_default();
            raw.unique_participants = row.contributors;
            raw.visitors = row.visitors;
            raw.converted_visitors = row.contributors + row.visitors - row.either;
            for (place, count) in row.kinds.0.into_iter().zip(row.kinds.1) {
                match place.checked_sub(1).and_then(|i| CONTRIBUTION_KINDS.get(i as usize)) {
                    Some(kind) => {
                        raw.contributions_by_kind.insert((*kind).to_owned(), count);
                    }
                    None if count == 0 => {}
                    None => return Err(StoreError::Unexpected(anyhow!("{count} stored contributions have a kind outside the contract"))),
                }
            }
        }
        for row in feedback {
            let raw = scopes.entry(scope(row.fiscal_year, row.scope)).or_default();
            raw.satisfaction_responses = row.responses;
            raw.satisfaction_sum = row.satisfaction_sum;
            raw.satisfied = row.satisfied;
            raw.suggestions = SuggestionFigures { received: row.received, answered: row.answered, implemented: row.implemented };
        }
        Ok(FigureSet { version, scopes })
    }

    /// Returns the consultation counts of counted (not cancelled) consultations by fiscal
    /// year and scope, with the close-to-results delays of those that have both.
    async fn consultation_groups(&self, g: u32) -> Result<Vec<ConsultationGroup>, StoreError> {
        self.fold_all(&format!(
            "SELECT s_fiscal_year, arrayJoin([s_organization_id, '']) AS scope, count(), sum(s_hosted_on = 'platform'),
                    sum(s_hosted_on = 'third_party'), sum(s_digital), sum(s_closed), sum(s_closed AND s_results),
                    groupArrayIf(s_results_at_ms - s_closed_at_ms, s_closed = 1 AND s_results = 1)
             FROM ({state}) WHERE s_cancelled = 0
             GROUP BY s_fiscal_year, scope",
            state = state_sql(g)
        ))
        .await
    }

    /// Returns the participation figures by fiscal year and scope of counted consultations:
    /// counted contributions (the earliest submission per id, not withdrawn) and visits go
    /// through one `UNION ALL` joined to their consultation, so that converted visitors (in
    /// both sets) are `|contributors| + |visitors| − |contributors ∪ visitors|`.
    async fn participation_groups(&self, g: u32) -> Result<Vec<ParticipationGroup>, StoreError> {
        // 18.16's sumMap takes numeric keys only: kinds go in as their 1-based place in the
        // contract's list (0 for the visits' empty kind, and for none other).
        let kinds = CONTRIBUTION_KINDS.iter().map(|k| format!("'{k}'")).collect::<Vec<_>>().join(", ");
        self.fold_all(&format!(
            "SELECT p_fiscal_year, arrayJoin([p_organization_id, '']) AS scope,
                    uniqExactIf(p_participant, p_source = 1), uniqExactIf(p_participant, p_source = 2), uniqExact(p_participant),
                    sumMap([indexOf([{kinds}], p_kind)], [toUInt64(p_source = 1)])
             FROM (
                 SELECT p_participant, p_kind, p_source, s_fiscal_year AS p_fiscal_year, s_organization_id AS p_organization_id
                 FROM (
                     SELECT c_participant AS p_participant, c_kind AS p_kind, toUInt8(1) AS p_source, c_consultation AS consultation_id
                     FROM ({contributions})
                     UNION ALL
                     SELECT participant AS p_participant, '' AS p_kind, toUInt8(2) AS p_source, consultation_id
                     FROM visits WHERE generation = {g}
                 ) ANY INNER JOIN (
                     SELECT consultation_id, s_fiscal_year, s_organization_id FROM ({state}) WHERE s_cancelled = 0
                 ) USING consultation_id
             )
             GROUP BY p_fiscal_year, scope",
            contributions = contributions_sql(g),
            state = state_sql(g)
        ))
        .await
    }

    /// Returns the satisfaction and suggestion figures of counted feedback (the latest per
    /// participant, scope and fiscal year) by fiscal year and scope.
    async fn feedback_groups(&self, g: u32) -> Result<Vec<FeedbackGroup>, StoreError> {
        self.fold_all(&format!(
            "SELECT f_fiscal_year, arrayJoin([f_organization, '']) AS scope, count(), sum(f_satisfaction), sum(f_satisfaction >= 4),
                    sum(f_suggestion), sum(f_suggestion AND t_triaged), sum(f_suggestion AND t_status = 'implemented')
             FROM (
                 SELECT f_event_id AS feedback_event_id, f_fiscal_year, f_organization, f_satisfaction, f_suggestion FROM (
                     SELECT fiscal_year AS f_fiscal_year,
                            argMax(organization_id, (at_ms, event_id)) AS f_organization,
                            argMax(satisfaction, (at_ms, event_id)) AS f_satisfaction,
                            argMax(has_suggestion, (at_ms, event_id)) AS f_suggestion,
                            argMax(event_id, (at_ms, event_id)) AS f_event_id
                     FROM feedback WHERE generation = {g}
                     GROUP BY fiscal_year, participant, scope
                 )
             ) ANY LEFT JOIN (
                 SELECT feedback_event_id, argMax(status, (at_ms, event_id)) AS t_status, toUInt8(1) AS t_triaged
                 FROM triage WHERE generation = {g} GROUP BY feedback_event_id
             ) USING feedback_event_id
             GROUP BY f_fiscal_year, scope"
        ))
        .await
    }

    pub(crate) async fn coverage(&self) -> Result<Coverage, StoreError> {
        let g = self.active_generation().await?;
        let organizations: Vec<String> = self
            .fetch_all(self.client.query(&format!(
                "SELECT DISTINCT organization_id FROM (
                     SELECT s_organization_id AS organization_id FROM ({state})
                     UNION ALL SELECT organization_id FROM feedback WHERE generation = {g}
                 ) ORDER BY organization_id",
                state = state_sql(g)
            )))
            .await?;
        let years: Vec<i32> = self
            .fetch_all(self.client.query(&format!(
                "SELECT DISTINCT fiscal_year FROM (
                     SELECT s_fiscal_year AS fiscal_year FROM ({state})
                     UNION ALL SELECT fiscal_year FROM feedback WHERE generation = {g}
                 ) ORDER BY fiscal_year",
                state = state_sql(g)
            )))
            .await?;
        Ok(Coverage { organizations, fiscal_years: years.into_iter().map(FiscalYear::starting_in).collect() })
    }

    pub(crate) async fn monthly_raw(&self, fiscal_year: FiscalYear, organization_id: Option<&str>) -> Result<MonthlyRaw, StoreError> {
        let g = self.active_generation().await?;
        let year = fiscal_year.start_year();
        let org = organization_id.unwrap_or("");
        let openings_ms: Vec<i64> = self
            .fetch_all(
                self.client
                    .query(&format!("SELECT s_opened_at_ms FROM ({state}) WHERE {COUNTED_STATE}", state = state_sql(g)))
                    .bind(year)
                    .bind(org)
                    .bind(org),
            )
            .await?;
        let contributions: Vec<(String, i64)> = self
            .fetch_all(
                self.client
                    .query(&format!("SELECT c_participant, c_at_ms FROM ({counted})", counted = counted_contributions_sql(g)))
                    .bind(year)
                    .bind(org)
                    .bind(org),
            )
            .await?;
        let feedback: Vec<(u8, i64)> = self
            .fetch_all(
                self.client
                    .query(&format!(
                        "SELECT f_satisfaction, f_at_ms FROM (
                             SELECT argMax(organization_id, (at_ms, event_id)) AS f_organization,
                                    argMax(satisfaction, (at_ms, event_id)) AS f_satisfaction, max(at_ms) AS f_at_ms
                             FROM feedback WHERE generation = {g} AND fiscal_year = ?
                             GROUP BY participant, scope
                         ) WHERE (? = '' OR f_organization = ?)"
                    ))
                    .bind(year)
                    .bind(org)
                    .bind(org),
            )
            .await?;
        Ok(MonthlyRaw { openings_ms, contributions, feedback })
    }

    pub(crate) async fn consultation(&self, consultation_id: &str) -> Result<Option<ConsultationView>, StoreError> {
        let g = self.active_generation().await?;
        #[derive(Row, Deserialize)]
        struct State {
            organization_id: String,
            fiscal_year: i32,
            cancelled: u8,
            closed: u8,
            results: u8,
            title_fr: String,
            has_title_en: u8,
            title_en: String,
            hosted_on: String,
            methods: String,
            digital: u8,
        }
        let state: Option<State> = self
            .fetch_optional(
                self.client
                    .query(&format!(
                        "SELECT s_organization_id, s_fiscal_year, s_cancelled, s_closed, s_results, s_title_fr, s_has_title_en,
                                s_title_en, s_hosted_on, s_methods, s_digital
                         FROM ({state}) WHERE consultation_id = ?",
                        state = state_sql(g)
                    ))
                    .bind(consultation_id),
            )
            .await?;
        let Some(state) = state else { return Ok(None) };
        let contributions = format!(
            "SELECT contribution_id, argMin(participant, (at_ms, event_id)) AS c_participant,
                    argMin(kind, (at_ms, event_id)) AS c_kind, argMin(consultation_id, (at_ms, event_id)) AS c_consultation
             FROM contributions
             WHERE generation = {g}
               AND contribution_id IN (SELECT contribution_id FROM contributions WHERE generation = {g} AND consultation_id = ?)
               AND contribution_id NOT IN (SELECT contribution_id FROM withdrawals WHERE generation = {g})
             GROUP BY contribution_id"
        );
        let by_kind: Vec<(String, u64)> = self
            .fetch_all(
                self.client
                    .query(&format!("SELECT c_kind, count() FROM ({contributions}) WHERE c_consultation = ? GROUP BY c_kind"))
                    .bind(consultation_id)
                    .bind(consultation_id),
            )
            .await?;
        let unique_participants: u64 = self
            .fetch_one(
                self.client
                    .query(&format!("SELECT uniqExact(c_participant) FROM ({contributions}) WHERE c_consultation = ?"))
                    .bind(consultation_id)
                    .bind(consultation_id),
            )
            .await?;
        let visitors: u64 = self
            .fetch_one(
                self.client
                    .query(&format!("SELECT uniqExact(participant) FROM visits WHERE generation = {g} AND consultation_id = ?"))
                    .bind(consultation_id),
            )
            .await?;
        let contributions_by_kind = every_kind(by_kind.into_iter().collect());
        Ok(Some(ConsultationView {
            consultation_id: consultation_id.to_owned(),
            organization_id: state.organization_id,
            fiscal_year: FiscalYear::starting_in(state.fiscal_year),
            status: if state.cancelled == 1 {
                "cancelled"
            } else if state.closed == 1 {
                "closed"
            } else {
                "open"
            }
            .to_owned(),
            title_fr: state.title_fr,
            title_en: (state.has_title_en == 1).then_some(state.title_en),
            hosted_on: state.hosted_on,
            methods: serde_json::from_str(&state.methods).context("failed to read stored methods")?,
            offers_digital_participation: state.digital == 1,
            unique_participants,
            contributions: contributions_by_kind.values().sum(),
            contributions_by_kind,
            visitors,
            results_published: state.results == 1,
        }))
    }

    /// Starts a rebuild into a fresh generation; see the module documentation.
    pub(crate) async fn begin_rebuild(&self) -> Result<ClickHouseRebuild, StoreError> {
        let newest: u32 = self.fetch_one(self.client.query("SELECT max(generation) FROM generations")).await?;
        let generation = newest + 1;
        self.run(self.client.query("INSERT INTO generations (generation, state) VALUES (?, ?)").bind(generation).bind(BUILDING).execute())
            .await?;
        info!(generation, "rebuilding the read models into a fresh generation");
        Ok(ClickHouseRebuild { store: self.clone(), generation })
    }

    /// Returns the generation readers use: the newest one marked active.
    async fn active_generation(&self) -> Result<u32, StoreError> {
        let g: u32 = self.fetch_one(self.client.query("SELECT max(generation) FROM generations WHERE state = 2")).await?;
        if g == 0 {
            return Err(StoreError::Unexpected(anyhow!("the clickhouse store has no active generation; run `agora migrate`")));
        }
        Ok(g)
    }

    /// Returns the generations a live batch goes to: the active one and any newer one being
    /// rebuilt, so a rebuild misses nothing applied while it runs.
    async fn write_generations(&self) -> Result<Vec<u32>, StoreError> {
        let states: Vec<(u32, u8)> = self
            .fetch_all(self.client.query("SELECT generation, max(state) FROM generations GROUP BY generation ORDER BY generation"))
            .await?;
        let active = states.iter().filter(|(_, s)| *s == ACTIVE).map(|(g, _)| *g).max().unwrap_or(0);
        Ok(states.into_iter().filter(|&(g, s)| g == active || (g > active && s == BUILDING)).map(|(g, _)| g).collect())
    }

    /// Inserts one batch's rows into one generation: one insert per table with rows, then
    /// the positions and the batch row that bumps the version.
    async fn insert_batch(
        &self,
        generation: u32,
        changes: &[RowChange],
        dead_letters: &[DeadLetter],
        positions: &Positions,
    ) -> Result<(), StoreError> {
        let g = generation;
        let mut openings = Vec::new();
        let mut marks = Vec::new();
        let mut fields = Vec::new();
        let mut contributions = Vec::new();
        let mut withdrawals = Vec::new();
        let mut visits = Vec::new();
        let mut feedback = Vec::new();
        let mut triage = Vec::new();
        let mut texts = Vec::new();
        for change in changes {
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
                } => openings.push(OpeningRow {
                    generation: g,
                    consultation_id,
                    organization_id,
                    at_ms: *at_ms,
                    event_id,
                    fiscal_year: fiscal_year.start_year(),
                    title_fr,
                    has_title_en: title_en.is_some() as u8,
                    title_en: title_en.as_deref().unwrap_or(""),
                    hosted_on,
                    methods: serde_json::to_string(methods).context("failed to encode methods")?,
                    digital: *digital as u8,
                }),
                RowChange::FieldSet { consultation_id, field, at_ms, event_id, value, digital } => fields.push(FieldRow {
                    generation: g,
                    consultation_id,
                    field: field.name(),
                    at_ms: *at_ms,
                    event_id,
                    value,
                    digital: digital.unwrap_or(false) as u8,
                }),
                RowChange::Closed { consultation_id, at_ms } => {
                    marks.push(MarkRow { generation: g, consultation_id, mark: 1, at_ms: *at_ms })
                }
                RowChange::Cancelled { consultation_id } => marks.push(MarkRow { generation: g, consultation_id, mark: 2, at_ms: 0 }),
                RowChange::ResultsPublished { consultation_id, at_ms } => {
                    marks.push(MarkRow { generation: g, consultation_id, mark: 3, at_ms: *at_ms })
                }
                RowChange::Visit { consultation_id, participant } => visits.push(VisitRow { generation: g, consultation_id, participant }),
                RowChange::Contribution { contribution_id, consultation_id, participant, kind, at_ms, event_id } => contributions
                    .push(ContributionRow { generation: g, contribution_id, consultation_id, participant, kind, at_ms: *at_ms, event_id }),
                RowChange::Withdrawal { contribution_id } => withdrawals.push(WithdrawalRow { generation: g, contribution_id }),
                RowChange::Feedback { participant, scope, fiscal_year, organization_id, satisfaction, has_suggestion, at_ms, event_id } => {
                    feedback.push(FeedbackRow {
                        generation: g,
                        participant,
                        scope,
                        fiscal_year: fiscal_year.start_year(),
                        organization_id,
                        satisfaction: *satisfaction,
                        has_suggestion: *has_suggestion as u8,
                        at_ms: *at_ms,
                        event_id,
                    })
                }
                RowChange::SuggestionText { feedback_event_id, text } => {
                    texts.push(SuggestionTextRow { generation: g, feedback_event_id, text })
                }
                RowChange::Triage { feedback_event_id, status, at_ms, event_id } => {
                    triage.push(TriageRow { generation: g, feedback_event_id, status, at_ms: *at_ms, event_id })
                }
            }
        }
        let letters: Vec<DeadLetterRow<'_>> = dead_letters
            .iter()
            .map(|l| DeadLetterRow { generation: g, partition: l.partition, offset: l.offset, reason: &l.reason, payload: &l.payload })
            .collect();
        let positions: Vec<PositionRow> =
            positions.iter().map(|(&partition, &next_offset)| PositionRow { generation: g, partition, next_offset }).collect();
        // The tables are independent, so their inserts run together; positions and the
        // batch row go last, once every row they vouch for is in.
        tokio::try_join!(
            self.insert::<OpeningRow<'static>>("consultation_openings", &openings),
            self.insert::<MarkRow<'static>>("consultation_marks", &marks),
            self.insert::<FieldRow<'static>>("consultation_fields", &fields),
            self.insert::<ContributionRow<'static>>("contributions", &contributions),
            self.insert::<WithdrawalRow<'static>>("withdrawals", &withdrawals),
            self.insert::<VisitRow<'static>>("visits", &visits),
            self.insert::<FeedbackRow<'static>>("feedback", &feedback),
            self.insert::<TriageRow<'static>>("triage", &triage),
            self.insert::<SuggestionTextRow<'static>>("suggestion_texts", &texts),
            self.insert::<DeadLetterRow<'static>>("dead_letters", &letters),
        )?;
        self.insert::<PositionRow>("log_positions", &positions).await?;
        self.insert::<BatchRow>("batches", &[BatchRow { generation: g, rows: changes.len() as u64 }]).await?;
        Ok(())
    }

    /// Inserts rows into `table` in one RowBinary insert (nothing when there are none).
    async fn insert<T>(&self, table: &str, rows: &[T::Value<'_>]) -> Result<(), StoreError>
    where
        T: clickhouse::RowWrite,
    {
        if rows.is_empty() {
            return Ok(());
        }
        let work = async {
            let mut insert = self.client.insert::<T>(table).await?.with_timeouts(Some(self.timeout), Some(self.timeout));
            for row in rows {
                insert.write(row).await?;
            }
            insert.end().await
        };
        self.run(work).await.map_err(|e| context(e, &format!("failed to insert into {table}")))
    }

    async fn execute(&self, sql: &str) -> Result<(), StoreError> {
        self.run(self.client.query(sql).execute()).await
    }

    /// Runs one fold of every scope (`sql`, no bound values) within the fold limits.
    async fn fold_all<T>(&self, sql: &str) -> Result<Vec<T>, StoreError>
    where
        T: clickhouse::RowOwned + clickhouse::RowRead,
    {
        let query = self
            .client
            .query(sql)
            .with_option("max_bytes_before_external_group_by", self.fold_memory_bytes.to_string())
            .with_option("max_memory_usage", (2 * self.fold_memory_bytes).to_string());
        self.run_within(self.fold_timeout, query.fetch_all::<T>()).await.map_err(|error| match error {
            // ClickHouse's MEMORY_LIMIT_EXCEEDED: say which setting governs it.
            StoreError::Unexpected(e) if format!("{e:#}").contains("Code: 241") => StoreError::Unexpected(e.context(format!(
                "a fold of every scope needs more than twice AGORA_CLICKHOUSE_FOLD_MEMORY_MB ({} MiB) in clickhouse",
                self.fold_memory_bytes >> 20
            ))),
            other => other,
        })
    }

    async fn fetch_all<T>(&self, query: clickhouse::query::Query) -> Result<Vec<T>, StoreError>
    where
        T: clickhouse::RowOwned + clickhouse::RowRead,
    {
        self.run(query.fetch_all::<T>()).await
    }

    async fn fetch_one<T>(&self, query: clickhouse::query::Query) -> Result<T, StoreError>
    where
        T: clickhouse::RowOwned + clickhouse::RowRead,
    {
        self.run(query.fetch_one::<T>()).await
    }

    async fn fetch_optional<T>(&self, query: clickhouse::query::Query) -> Result<Option<T>, StoreError>
    where
        T: clickhouse::RowOwned + clickhouse::RowRead,
    {
        self.run(query.fetch_optional::<T>()).await
    }

    /// Runs one request within the statement timeout, sorting failures into "unavailable"
    /// (the server cannot be reached or answered too late) and unexpected ones.
    async fn run<T>(&self, request: impl std::future::Future<Output = clickhouse::error::Result<T>>) -> Result<T, StoreError> {
        self.run_within(self.timeout, request).await
    }

    /// [`Self::run`] with a timeout of its own.
    async fn run_within<T>(
        &self,
        timeout: Duration,
        request: impl std::future::Future<Output = clickhouse::error::Result<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(timeout, request).await {
            Err(_) => Err(StoreError::Unavailable(anyhow!("clickhouse did not answer within {timeout:?}"))),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error @ (clickhouse::error::Error::Network(_) | clickhouse::error::Error::TimedOut))) => {
                Err(StoreError::Unavailable(anyhow!(error).context("clickhouse unreachable")))
            }
            Ok(Err(error)) => Err(StoreError::Unexpected(anyhow!(error).context("clickhouse request failed"))),
        }
    }
}

/// A rebuild in progress into a fresh generation; see [`ClickHouseStore::begin_rebuild`].
/// Dropped without a commit, the generation is never marked active and readers never see it;
/// the next rebuild drops it.
pub struct ClickHouseRebuild {
    store: ClickHouseStore,
    generation: u32,
}

impl ClickHouseRebuild {
    pub(crate) async fn apply(&mut self, changes: Vec<RowChange>, dead_letters: Vec<DeadLetter>) -> Result<(), StoreError> {
        self.store.insert_batch(self.generation, &changes, &dead_letters, &Positions::new()).await
    }

    /// Records `positions`, marks the generation active (readers switch with that one
    /// insert), then drops every generation older than the one it replaced: the replaced one
    /// stays until the next rebuild, for readers that picked it just before the switch.
    pub(crate) async fn commit(self, positions: Positions) -> Result<(), StoreError> {
        let store = &self.store;
        let previous = store.active_generation().await?;
        store.insert_batch(self.generation, &[], &[], &positions).await?;
        store
            .run(
                store
                    .client
                    .query("INSERT INTO generations (generation, state) VALUES (?, ?)")
                    .bind(self.generation)
                    .bind(ACTIVE)
                    .execute(),
            )
            .await?;
        info!(generation = self.generation, previous, "rebuilt read models now serve");
        if let Err(error) = store.drop_generations_before(previous.min(self.generation)).await {
            warn!(error = format!("{error:#}"), "old generations not dropped; the next rebuild retries");
        }
        Ok(())
    }
}

impl ClickHouseStore {
    /// Drops the partitions of every generation below `keep_from`.
    async fn drop_generations_before(&self, keep_from: u32) -> anyhow::Result<()> {
        let parts: Vec<(String, String)> = self
            .fetch_all(
                self.client.query("SELECT DISTINCT table, partition FROM system.parts WHERE database = currentDatabase() AND active"),
            )
            .await?;
        for (table, partition) in parts {
            let Ok(generation) = partition.trim_matches('\'').parse::<u32>() else { continue };
            if generation < keep_from && TABLES.contains(&table.as_str()) {
                // DDL takes no bound values: both the table (from TABLES) and the number are ours.
                self.execute(&format!("ALTER TABLE {table} DROP PARTITION {generation}")).await?;
            }
        }
        Ok(())
    }
}

/// The filter of counted consultations over [`state_sql`]: `?` fiscal year, then the
/// organization (or `''`) twice.
const COUNTED_STATE: &str = "s_cancelled = 0 AND s_fiscal_year = ? AND (? = '' OR s_organization_id = ?)";

/// Returns the ids of counted consultations of generation `g`; binds as [`COUNTED_STATE`].
fn counted_ids_sql(g: u32) -> String {
    format!("SELECT consultation_id FROM ({state}) WHERE {COUNTED_STATE}", state = state_sql(g))
}

/// Returns the counted contributions (the earliest submission per id, not withdrawn, in a
/// counted consultation) of generation `g`; binds as [`COUNTED_STATE`].
fn counted_contributions_sql(g: u32) -> String {
    format!(
        "SELECT c_participant, c_kind, c_consultation, c_at_ms FROM ({contributions}) WHERE c_consultation IN ({ids})",
        contributions = contributions_sql(g),
        ids = counted_ids_sql(g)
    )
}

/// Returns every contribution of generation `g` that is not withdrawn, as its earliest
/// submission says (columns `c_*`), whatever its consultation.
fn contributions_sql(g: u32) -> String {
    // Filters sit outside the grouping: 18.16 cannot resolve a subquery under HAVING.
    format!(
        "SELECT contribution_id, min(at_ms) AS c_at_ms, argMin(participant, (at_ms, event_id)) AS c_participant,
                argMin(kind, (at_ms, event_id)) AS c_kind, argMin(consultation_id, (at_ms, event_id)) AS c_consultation
         FROM contributions
         WHERE generation = {g} AND contribution_id NOT IN (SELECT contribution_id FROM withdrawals WHERE generation = {g})
         GROUP BY contribution_id"
    )
}

/// Returns each opened consultation's state in generation `g`, folded as SPEC §2 says: the
/// earliest opening, the earliest close and results, any cancellation, and each field set
/// by the latest update when it is later than the opening. Columns are `consultation_id`
/// and `s_*`.
fn state_sql(g: u32) -> String {
    let field = |prefix: &str, name: &str| {
        format!(
            "countIf(field = '{name}') AS {prefix}_n, maxIf((at_ms, event_id), field = '{name}') AS {prefix}_key,
             argMaxIf(value, (at_ms, event_id), field = '{name}') AS {prefix}_value"
        )
    };
    format!(
        "SELECT consultation_id, o_organization_id AS s_organization_id, o_fiscal_year AS s_fiscal_year,
                tupleElement(o_key, 1) AS s_opened_at_ms,
                m_cancelled AS s_cancelled, m_closed AS s_closed, m_closed_at_ms AS s_closed_at_ms,
                m_results AS s_results, m_results_at_ms AS s_results_at_ms,
                if(tf_n > 0 AND tf_key > o_key, tf_value, o_title_fr) AS s_title_fr,
                if(te_n > 0 AND (o_has_title_en = 0 OR te_key > o_key), 1, o_has_title_en) AS s_has_title_en,
                if(te_n > 0 AND (o_has_title_en = 0 OR te_key > o_key), te_value, o_title_en) AS s_title_en,
                if(h_n > 0 AND h_key > o_key, h_value, o_hosted_on) AS s_hosted_on,
                if(m_n > 0 AND m_key > o_key, m_value, o_methods) AS s_methods,
                if(m_n > 0 AND m_key > o_key, m_digital, o_digital) AS s_digital
         FROM (
             SELECT consultation_id, o_key, o_organization_id, o_fiscal_year, o_title_fr, o_has_title_en, o_title_en, o_hosted_on,
                    o_methods, o_digital, m_cancelled, m_closed, m_closed_at_ms, m_results, m_results_at_ms
             FROM (
                 SELECT consultation_id, min((at_ms, event_id)) AS o_key,
                        argMin(organization_id, (at_ms, event_id)) AS o_organization_id,
                        argMin(fiscal_year, (at_ms, event_id)) AS o_fiscal_year,
                        argMin(title_fr, (at_ms, event_id)) AS o_title_fr,
                        argMin(has_title_en, (at_ms, event_id)) AS o_has_title_en,
                        argMin(title_en, (at_ms, event_id)) AS o_title_en,
                        argMin(hosted_on, (at_ms, event_id)) AS o_hosted_on,
                        argMin(methods, (at_ms, event_id)) AS o_methods,
                        argMin(digital, (at_ms, event_id)) AS o_digital
                 FROM consultation_openings WHERE generation = {g} GROUP BY consultation_id
             ) ANY LEFT JOIN (
                 SELECT consultation_id,
                        toUInt8(countIf(mark = 'cancelled') > 0) AS m_cancelled,
                        toUInt8(countIf(mark = 'closed') > 0) AS m_closed, minIf(at_ms, mark = 'closed') AS m_closed_at_ms,
                        toUInt8(countIf(mark = 'results') > 0) AS m_results, minIf(at_ms, mark = 'results') AS m_results_at_ms
                 FROM consultation_marks WHERE generation = {g} GROUP BY consultation_id
             ) USING consultation_id
         ) ANY LEFT JOIN (
             SELECT consultation_id, {tf}, {te}, {h}, {m}, argMaxIf(digital, (at_ms, event_id), field = 'methods') AS m_digital
             FROM consultation_fields WHERE generation = {g} GROUP BY consultation_id
         ) USING consultation_id",
        tf = field("tf", "title_fr"),
        te = field("te", "title_en"),
        h = field("h", "hosted_on"),
        m = field("m", "methods"),
    )
}

/// Adds a message to a store error, keeping its kind.
fn context(error: StoreError, message: &str) -> StoreError {
    match error {
        StoreError::Unavailable(e) => StoreError::Unavailable(e.context(message.to_owned())),
        StoreError::Unexpected(e) => StoreError::Unexpected(e.context(message.to_owned())),
    }
}
