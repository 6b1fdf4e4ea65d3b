//! `agora audit`: recomputes every SPEC §3 figure from the raw event log with polars,
//! independently of the projector and the store's SQL, and lists each figure where the
//! served document differs.
//!
//! The log is read whole (every partition from offset 0), decoded, deduplicated by
//! `event_id`, and turned into one polars table of events. The folding rules of SPEC §2 are
//! then applied as table operations (earliest opening, latest setter per field, earliest
//! close and results, withdrawals, latest feedback per participant, scope and year, latest
//! triage) and counted per fiscal year, for the whole government and per public body. Only
//! the last step, from counts to shares, means, medians and targets, is shared with the query
//! role (`Figures::from_raw` and the target rules), so that both documents have one shape.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use agora_eventlog::{decode, EventLog};
use agora_query::{document_from_raw, indicator_document, QueryMetrics, QueryState, TargetDefinition};
use agora_schemas::event::EventBody;
use agora_schemas::rules::is_digital_method;
use agora_schemas::FiscalYear;
use agora_store::{ConsultationFigures, RawFigures, Store, SuggestionFigures};
use anyhow::Context;
use polars::prelude::*;
use serde_json::Value;

/// One figure that differs.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    pub fiscal_year: FiscalYear,
    pub organization_id: Option<String>,
    /// The figure's path in the indicator document, such as `participation.contributions`.
    pub figure: String,
    pub recomputed: Value,
    pub served: Value,
}

/// What an audit read and found.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditReport {
    pub records: u64,
    /// Records that could not be decoded (the projector dead-letters them too).
    pub undecodable: u64,
    /// Indicator documents compared: fiscal years × (government + public bodies).
    pub documents: usize,
    pub differences: Vec<Difference>,
}

/// A (fiscal year, organization) scope; `None` is the whole government.
type Scope = (i32, Option<String>);

/// Audits `store` against `log`. `on_progress` receives records read so far and the total.
pub async fn audit(
    log: &EventLog,
    store: &Store,
    targets: Vec<TargetDefinition>,
    mut on_progress: impl FnMut(u64, u64),
) -> anyhow::Result<AuditReport> {
    let ends = log.end_positions().await.context("failed to read the log's end")?;
    let total: u64 = ends.values().map(|&end| end.max(0) as u64).sum();
    let mut table = EventTable::default();
    let (mut records, mut undecodable) = (0u64, 0u64);
    on_progress(0, total);
    for (&partition, &end) in &ends {
        let mut from = 0;
        while from < end {
            let batch = log.read(partition, from, 10_000.min((end - from) as usize)).await.context("failed to read the log")?;
            let Some(last) = batch.last() else { break };
            from = last.offset + 1;
            records += batch.len() as u64;
            for record in &batch {
                match decode(&record.payload) {
                    Ok(event) => table.push(event),
                    Err(_) => undecodable += 1,
                }
            }
            on_progress(records, total);
        }
    }
    let recomputed = tokio::task::spawn_blocking(move || table.figures()).await.context("audit task failed")??;

    let state = QueryState::new(
        store.clone(),
        log.clone(),
        Vec::new(),
        false,
        targets.clone(),
        QueryMetrics::register(&prometheus::Registry::new())?,
    );
    let coverage = store.coverage().await.context("failed to read the store's coverage")?;
    let mut scopes: BTreeSet<Scope> = recomputed.keys().cloned().collect();
    for year in &coverage.fiscal_years {
        scopes.insert((year.start_year(), None));
        for organization in &coverage.organizations {
            scopes.insert((year.start_year(), Some(organization.clone())));
        }
    }
    let mut differences = Vec::new();
    for (year, organization) in &scopes {
        let fiscal_year = FiscalYear::starting_in(*year);
        let raw = recomputed.get(&(*year, organization.clone())).cloned().unwrap_or_default();
        let previous = recomputed.get(&(*year - 1, organization.clone())).map_or(0, |r| r.consultations.on_platform);
        let expected = document_from_raw(&targets, fiscal_year, organization.clone(), raw, previous).map_err(|e| anyhow::anyhow!("{e}"))?;
        let served = indicator_document(&state, fiscal_year, organization.clone()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let (expected, served) = (leaves(&expected), leaves(&served));
        for (figure, value) in &expected {
            let other = served.get(figure).cloned().unwrap_or(Value::Null);
            if *value != other {
                differences.push(Difference {
                    fiscal_year,
                    organization_id: organization.clone(),
                    figure: figure.clone(),
                    recomputed: value.clone(),
                    served: other,
                });
            }
        }
    }
    Ok(AuditReport { records, undecodable, documents: scopes.len(), differences })
}

/// Returns a document's leaves by dotted path; targets are named by their id.
fn leaves(document: &Value) -> BTreeMap<String, Value> {
    fn walk(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                    walk(&path, child, out);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    let name = child["id"].as_str().map_or_else(|| i.to_string(), str::to_owned);
                    walk(&format!("{prefix}.{name}"), child, out);
                }
            }
            leaf => {
                out.insert(prefix.to_owned(), leaf.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", document, &mut out);
    out
}

/// The decoded events, one column per field, each event once.
#[derive(Default)]
struct EventTable {
    seen: HashSet<String>,
    event_id: Vec<String>,
    kind: Vec<&'static str>,
    at: Vec<i64>,
    /// Fiscal year of the local date of `occurred_at`.
    fy: Vec<i32>,
    organization: Vec<String>,
    consultation: Vec<Option<String>>,
    participant: Vec<Option<String>>,
    hosted_on: Vec<Option<String>>,
    /// Whether the methods the event sets include a digital one.
    digital: Vec<Option<bool>>,
    contribution: Vec<Option<String>>,
    contribution_kind: Vec<Option<String>>,
    satisfaction: Vec<Option<i64>>,
    has_suggestion: Vec<Option<bool>>,
    feedback_event: Vec<Option<String>>,
    status: Vec<Option<String>>,
}

impl EventTable {
    fn push(&mut self, event: agora_schemas::Event) {
        if !self.seen.insert(event.event_id.clone()) {
            return;
        }
        let (mut hosted_on, mut digital, mut contribution, mut contribution_kind) = (None, None, None, None);
        let (mut satisfaction, mut has_suggestion, mut feedback_event, mut status) = (None, None, None, None);
        let any_digital = |methods: &[String]| methods.iter().any(|m| is_digital_method(m));
        match &event.body {
            EventBody::ConsultationOpened { hosted_on: h, methods, .. } => {
                hosted_on = Some(h.clone());
                digital = Some(any_digital(methods));
            }
            EventBody::ConsultationUpdated { hosted_on: h, methods, .. } => {
                hosted_on = h.clone();
                digital = methods.as_deref().map(any_digital);
            }
            EventBody::ContributionSubmitted { contribution_id, kind } => {
                contribution = Some(contribution_id.clone());
                contribution_kind = Some(kind.clone());
            }
            EventBody::ContributionWithdrawn { contribution_id, .. } => contribution = Some(contribution_id.clone()),
            EventBody::FeedbackSubmitted { satisfaction: s, suggestion } => {
                satisfaction = Some(i64::from(*s));
                has_suggestion = Some(suggestion.as_deref().is_some_and(|s| !s.trim().is_empty()));
            }
            EventBody::SuggestionTriaged { feedback_event_id, status: s } => {
                feedback_event = Some(feedback_event_id.to_lowercase());
                status = Some(s.clone());
            }
            _ => {}
        }
        self.fy.push(FiscalYear::of_millis(event.occurred_at_ms()).start_year());
        self.at.push(event.occurred_at_ms());
        self.kind.push(event.type_name());
        self.event_id.push(event.event_id.to_lowercase());
        self.organization.push(event.organization_id);
        self.consultation.push(event.consultation_id);
        self.participant.push(event.participant_id);
        self.hosted_on.push(hosted_on);
        self.digital.push(digital);
        self.contribution.push(contribution);
        self.contribution_kind.push(contribution_kind);
        self.satisfaction.push(satisfaction);
        self.has_suggestion.push(has_suggestion);
        self.feedback_event.push(feedback_event);
        self.status.push(status);
    }

    /// Applies the folding rules and counts, per fiscal year, for the whole government and
    /// per public body.
    fn figures(self) -> anyhow::Result<BTreeMap<Scope, RawFigures>> {
        let events = DataFrame::new_infer_height(vec![
            Column::new("event_id".into(), self.event_id),
            Column::new("type".into(), self.kind.iter().map(|k| k.to_string()).collect::<Vec<_>>()),
            Column::new("at".into(), self.at),
            Column::new("fy".into(), self.fy),
            Column::new("org".into(), self.organization),
            Column::new("consultation".into(), self.consultation),
            Column::new("participant".into(), self.participant),
            Column::new("hosted_on".into(), self.hosted_on),
            Column::new("digital".into(), self.digital),
            Column::new("contribution".into(), self.contribution),
            Column::new("contribution_kind".into(), self.contribution_kind),
            Column::new("satisfaction".into(), self.satisfaction),
            Column::new("has_suggestion".into(), self.has_suggestion),
            Column::new("feedback_event".into(), self.feedback_event),
            Column::new("status".into(), self.status),
        ])?
        .lazy();
        let of_type = |t: &str| events.clone().filter(col("type").eq(lit(t.to_owned())));
        let order = || [col("at"), col("event_id")];
        let earliest = |c: &str| col(c).sort_by(order(), SortMultipleOptions::default()).first().alias(c);
        let latest = |c: &str| col(c).sort_by(order(), SortMultipleOptions::default()).last().alias(c);

        // Consultations: the earliest opening; the latest setter of hosted_on and of methods
        // among that opening and the updates; the earliest close and results; cancellation.
        let openings = of_type("consultation.opened").group_by([col("consultation")]).agg([
            earliest("org"),
            earliest("fy"),
            earliest("at"),
            earliest("event_id"),
        ]);
        let opening_setters = of_type("consultation.opened")
            .join(
                openings.clone(),
                [col("consultation"), col("event_id")],
                [col("consultation"), col("event_id")],
                JoinArgs::new(JoinType::Inner),
            )
            .select([col("consultation"), col("at"), col("event_id"), col("hosted_on"), col("digital")]);
        let updates =
            of_type("consultation.updated").select([col("consultation"), col("at"), col("event_id"), col("hosted_on"), col("digital")]);
        let setters = concat([opening_setters, updates], UnionArgs::default())?;
        let field = |name: &str| setters.clone().filter(col(name).is_not_null()).group_by([col("consultation")]).agg([latest(name)]);
        let mark = |t: &str, name: &str| of_type(t).group_by([col("consultation")]).agg([col("at").min().alias(name)]);
        let cancelled = of_type("consultation.cancelled").group_by([col("consultation")]).agg([len().alias("cancelled")]);
        let left = |a: LazyFrame, b: LazyFrame| a.join(b, [col("consultation")], [col("consultation")], JoinArgs::new(JoinType::Left));
        let consultations = left(
            left(
                left(left(left(openings, field("hosted_on")), field("digital")), mark("consultation.closed", "closed_at")),
                mark("consultation.results_published", "results_at"),
            ),
            cancelled,
        )
        .filter(col("cancelled").is_null())
        .select([
            col("consultation"),
            col("org"),
            col("fy"),
            col("hosted_on"),
            col("digital"),
            col("closed_at"),
            col("results_at"),
        ]);

        // Contributions: the earliest submission per id, not withdrawn, in a counted consultation.
        let withdrawn = of_type("contribution.withdrawn").group_by([col("contribution")]).agg([len().alias("withdrawn")]);
        let counted_consultations = consultations.clone().select([col("consultation"), col("org"), col("fy")]);
        let contributions = of_type("contribution.submitted")
            .group_by([col("contribution")])
            .agg([earliest("consultation"), earliest("participant"), earliest("contribution_kind")])
            .join(withdrawn, [col("contribution")], [col("contribution")], JoinArgs::new(JoinType::Left))
            .filter(col("withdrawn").is_null())
            .join(counted_consultations.clone(), [col("consultation")], [col("consultation")], JoinArgs::new(JoinType::Inner));
        let visits = of_type("participant.visited").select([col("consultation"), col("participant")]).join(
            counted_consultations,
            [col("consultation")],
            [col("consultation")],
            JoinArgs::new(JoinType::Inner),
        );

        // Feedback: the latest per (participant, consultation or platform, fiscal year), with
        // its suggestion's latest triage.
        let triage = of_type("suggestion.triaged").group_by([col("feedback_event")]).agg([latest("status")]);
        let feedback = of_type("feedback.submitted")
            .with_column(col("consultation").fill_null(lit("")).alias("scope"))
            .group_by([col("participant"), col("scope"), col("fy")])
            .agg([latest("org"), latest("satisfaction"), latest("has_suggestion"), latest("event_id")])
            .join(triage, [col("event_id")], [col("feedback_event")], JoinArgs::new(JoinType::Left));

        let mut out: BTreeMap<Scope, RawFigures> = BTreeMap::new();
        for by_org in [false, true] {
            let keys: Vec<Expr> = if by_org { vec![col("fy"), col("org")] } else { vec![col("fy")] };
            let flag = |e: Expr| e.cast(DataType::UInt64).sum();
            let counts = consultations
                .clone()
                .group_by(keys.clone())
                .agg([
                    len().cast(DataType::UInt64).alias("opened"),
                    flag(col("hosted_on").eq(lit("platform"))).alias("on_platform"),
                    flag(col("hosted_on").eq(lit("third_party"))).alias("third_party"),
                    flag(col("digital")).alias("digital"),
                    flag(col("closed_at").is_not_null()).alias("closed"),
                    flag(col("closed_at").is_not_null().and(col("results_at").is_not_null())).alias("with_results"),
                ])
                .collect()?;
            for (i, scope) in scopes(&counts, by_org)?.into_iter().enumerate() {
                let c = &mut out.entry(scope).or_default().consultations;
                *c = ConsultationFigures {
                    opened: u64_at(&counts, "opened", i)?,
                    on_platform: u64_at(&counts, "on_platform", i)?,
                    third_party: u64_at(&counts, "third_party", i)?,
                    with_digital_participation: u64_at(&counts, "digital", i)?,
                    closed: u64_at(&counts, "closed", i)?,
                    with_results_published: u64_at(&counts, "with_results", i)?,
                };
            }
            let delays = consultations
                .clone()
                .filter(col("closed_at").is_not_null().and(col("results_at").is_not_null()))
                .select(keys.iter().cloned().chain([(col("results_at") - col("closed_at")).alias("delay")]).collect::<Vec<_>>())
                .collect()?;
            for (i, scope) in scopes(&delays, by_org)?.into_iter().enumerate() {
                let delay = delays.column("delay")?.i64()?.get(i).unwrap_or_default();
                out.entry(scope).or_default().result_delays_ms.push(delay);
            }
            let by_kind = contributions
                .clone()
                .group_by(keys.iter().cloned().chain([col("contribution_kind")]).collect::<Vec<_>>())
                .agg([len().cast(DataType::UInt64).alias("n")])
                .collect()?;
            for (i, scope) in scopes(&by_kind, by_org)?.into_iter().enumerate() {
                let kind = by_kind.column("contribution_kind")?.str()?.get(i).unwrap_or_default().to_owned();
                out.entry(scope).or_default().contributions_by_kind.insert(kind, u64_at(&by_kind, "n", i)?);
            }
            let participants = contributions
                .clone()
                .group_by(keys.clone())
                .agg([col("participant").n_unique().cast(DataType::UInt64).alias("n")])
                .collect()?;
            for (i, scope) in scopes(&participants, by_org)?.into_iter().enumerate() {
                out.entry(scope).or_default().unique_participants = u64_at(&participants, "n", i)?;
            }
            let contributors = contributions
                .clone()
                .select(keys.iter().cloned().chain([col("participant")]).collect::<Vec<_>>())
                .group_by(keys.iter().cloned().chain([col("participant")]).collect::<Vec<_>>())
                .agg([len().alias("contributed")]);
            let mut join_keys = keys.clone();
            join_keys.push(col("participant"));
            let visitors = visits
                .clone()
                .group_by(join_keys.clone())
                .agg([len().alias("visits")])
                .join(contributors, join_keys.clone(), join_keys, JoinArgs::new(JoinType::Left))
                .group_by(keys.clone())
                .agg([len().cast(DataType::UInt64).alias("visitors"), flag(col("contributed").is_not_null()).alias("converted")])
                .collect()?;
            for (i, scope) in scopes(&visitors, by_org)?.into_iter().enumerate() {
                let raw = out.entry(scope).or_default();
                raw.visitors = u64_at(&visitors, "visitors", i)?;
                raw.converted_visitors = u64_at(&visitors, "converted", i)?;
            }
            let answered = col("has_suggestion").and(col("status").is_not_null());
            let satisfaction = feedback
                .clone()
                .group_by(keys.clone())
                .agg([
                    len().cast(DataType::UInt64).alias("responses"),
                    col("satisfaction").cast(DataType::UInt64).sum().alias("sum"),
                    flag(col("satisfaction").gt_eq(lit(4))).alias("satisfied"),
                    flag(col("has_suggestion")).alias("received"),
                    flag(answered.clone()).alias("answered"),
                    flag(answered.and(col("status").eq(lit("implemented")))).alias("implemented"),
                ])
                .collect()?;
            for (i, scope) in scopes(&satisfaction, by_org)?.into_iter().enumerate() {
                let raw = out.entry(scope).or_default();
                raw.satisfaction_responses = u64_at(&satisfaction, "responses", i)?;
                raw.satisfaction_sum = u64_at(&satisfaction, "sum", i)?;
                raw.satisfied = u64_at(&satisfaction, "satisfied", i)?;
                raw.suggestions = SuggestionFigures {
                    received: u64_at(&satisfaction, "received", i)?,
                    answered: u64_at(&satisfaction, "answered", i)?,
                    implemented: u64_at(&satisfaction, "implemented", i)?,
                };
            }
        }
        Ok(out)
    }
}

/// Returns the scope of each row of a result grouped by `fy` (and `org` when `by_org`).
fn scopes(frame: &DataFrame, by_org: bool) -> PolarsResult<Vec<Scope>> {
    let years = frame.column("fy")?.i32()?;
    let organizations = if by_org { Some(frame.column("org")?.str()?) } else { None };
    Ok((0..frame.height()).map(|i| (years.get(i).unwrap_or_default(), organizations.and_then(|o| o.get(i)).map(str::to_owned))).collect())
}

fn u64_at(frame: &DataFrame, name: &str, i: usize) -> PolarsResult<u64> {
    Ok(frame.column(name)?.cast(&DataType::UInt64)?.u64()?.get(i).unwrap_or(0))
}
