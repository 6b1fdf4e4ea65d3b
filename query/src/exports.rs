//! Open-data exports of the indicators: one row per (fiscal year, scope) — whole government,
//! then each public body — with the figures of `GET /v1/indicators` flattened into the
//! documented columns of [`COLUMNS`] and the targets' columns. Written as CSV (UTF-8, header
//! row, `.` decimals, empty cells for nulls) or Parquet with polars, off the async runtime.
//! Served at `GET /v1/exports/indicators.{csv,parquet}` and written by `agora export`.

use agora_schemas::FiscalYear;
use polars::prelude::*;
use serde_json::Value;

use crate::{indicator_document, QueryError, QueryState, ReadScope};

/// How a column is typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Count,
    Decimal,
    Flag,
}

/// The export's columns before the targets: name, where the value sits in the indicator
/// document (a JSON pointer), type, and meaning.
pub const COLUMNS: &[(&str, &str, Kind, &str)] = &[
    ("fiscal_year", "/fiscal_year", Kind::Text, "fiscal year, April 1 to March 31, as 2024-2025"),
    ("organization_id", "/organization_id", Kind::Text, "public body code; empty for the whole government"),
    ("consultations_opened", "/consultations/opened", Kind::Count, "consultations opened in the year, not cancelled"),
    ("consultations_on_platform", "/consultations/on_platform", Kind::Count, "of those, hosted on the government platform"),
    ("consultations_third_party", "/consultations/third_party", Kind::Count, "of those, hosted on a third-party site"),
    (
        "consultations_with_digital_participation",
        "/consultations/with_digital_participation",
        Kind::Count,
        "of those, offering a digital means of participation",
    ),
    ("consultations_closed", "/consultations/closed", Kind::Count, "of those, closed"),
    (
        "consultations_with_results_published",
        "/consultations/with_results_published",
        Kind::Count,
        "of the closed ones, with results published",
    ),
    ("unique_participants", "/participation/unique_participants", Kind::Count, "distinct participants with a counted contribution"),
    ("contributions", "/participation/contributions", Kind::Count, "counted contributions (not withdrawn)"),
    ("contributions_comment", "/participation/contributions_by_kind/comment", Kind::Count, "counted comments"),
    ("contributions_survey_response", "/participation/contributions_by_kind/survey_response", Kind::Count, "counted survey responses"),
    ("contributions_proposal", "/participation/contributions_by_kind/proposal", Kind::Count, "counted proposals"),
    ("contributions_vote", "/participation/contributions_by_kind/vote", Kind::Count, "counted votes"),
    ("contributions_brief", "/participation/contributions_by_kind/brief", Kind::Count, "counted briefs"),
    ("visitors", "/participation/visitors", Kind::Count, "distinct participants who visited a consultation of the year"),
    (
        "visitor_conversion",
        "/participation/visitor_conversion",
        Kind::Decimal,
        "share of visitors who also contributed; empty without visitors",
    ),
    ("satisfaction_responses", "/satisfaction/responses", Kind::Count, "counted satisfaction responses"),
    ("satisfaction_mean", "/satisfaction/mean", Kind::Decimal, "mean satisfaction, 1 to 5; empty without responses"),
    ("satisfaction_csat", "/satisfaction/csat", Kind::Decimal, "share of responses of 4 or 5; empty without responses"),
    ("results_published_share", "/results/published_share", Kind::Decimal, "share of closed consultations with results published"),
    ("median_days_to_results", "/results/median_days_to_results", Kind::Decimal, "median days from closing to results"),
    ("suggestions_received", "/suggestions/received", Kind::Count, "suggestions of counted feedback"),
    ("suggestions_answered", "/suggestions/answered", Kind::Count, "of those, triaged at least once"),
    ("suggestions_implemented", "/suggestions/implemented", Kind::Count, "of those, whose status is implemented"),
];

/// The columns each target adds, as `target_<id>_<field>`.
pub const TARGET_FIELDS: &[(&str, Kind)] =
    &[("value", Kind::Decimal), ("target", Kind::Decimal), ("numerator", Kind::Count), ("denominator", Kind::Count), ("met", Kind::Flag)];

/// A file format of the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Parquet,
}

impl Format {
    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Parquet => "parquet",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Parquet => "application/vnd.apache.parquet",
        }
    }
}

/// Returns the indicator documents of every fiscal year from `from` to `to` (both included;
/// by default the first and last years the store holds), for the whole government and each
/// public body the scope may read.
pub async fn documents(
    state: &QueryState,
    scope: &ReadScope,
    from: Option<FiscalYear>,
    to: Option<FiscalYear>,
) -> Result<Vec<Value>, QueryError> {
    let coverage = state.store.coverage().await?;
    let (Some(first), Some(last)) = (from.or(coverage.fiscal_years.first().copied()), to.or(coverage.fiscal_years.last().copied())) else {
        return Ok(Vec::new());
    };
    if first > last {
        return Err(QueryError::BadRequest(format!("from ({first}) must not be after to ({last})")));
    }
    let organizations: Vec<String> = match scope {
        ReadScope::All => coverage.organizations,
        ReadScope::Organization(own) => vec![own.clone()],
    };
    let mut documents = Vec::new();
    let mut year = first;
    while year <= last {
        documents.push(indicator_document(state, year, None).await?);
        for organization in &organizations {
            documents.push(indicator_document(state, year, Some(organization.clone())).await?);
        }
        year = year.next();
    }
    Ok(documents)
}

/// Flattens indicator documents into the export's table.
pub fn frame(documents: &[Value]) -> PolarsResult<DataFrame> {
    let mut columns: Vec<Column> =
        COLUMNS.iter().map(|(name, pointer, kind, _)| column(name, *kind, documents.iter().map(|d| d.pointer(pointer)))).collect();
    let target_ids: Vec<String> = documents
        .first()
        .and_then(|d| d["targets"].as_array())
        .map(|targets| targets.iter().filter_map(|t| t["id"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    for id in &target_ids {
        for (field, kind) in TARGET_FIELDS {
            let values = documents
                .iter()
                .map(|d| d["targets"].as_array().and_then(|targets| targets.iter().find(|t| t["id"] == id.as_str())).map(|t| &t[*field]));
            columns.push(column(&format!("target_{id}_{field}"), *kind, values));
        }
    }
    DataFrame::new_infer_height(columns)
}

fn column<'a>(name: &str, kind: Kind, values: impl Iterator<Item = Option<&'a Value>>) -> Column {
    let name: PlSmallStr = name.into();
    match kind {
        Kind::Text => Column::new(name, values.map(|v| v.and_then(Value::as_str).map(str::to_owned)).collect::<Vec<Option<String>>>()),
        Kind::Count => Column::new(name, values.map(|v| v.and_then(Value::as_u64)).collect::<Vec<Option<u64>>>()),
        Kind::Decimal => Column::new(name, values.map(|v| v.and_then(Value::as_f64)).collect::<Vec<Option<f64>>>()),
        Kind::Flag => Column::new(name, values.map(|v| v.and_then(Value::as_bool)).collect::<Vec<Option<bool>>>()),
    }
}

/// Writes the table in `format`.
pub fn encode(mut frame: DataFrame, format: Format) -> PolarsResult<Vec<u8>> {
    let mut bytes = Vec::new();
    match format {
        Format::Csv => CsvWriter::new(&mut bytes).include_header(true).finish(&mut frame)?,
        Format::Parquet => {
            ParquetWriter::new(&mut bytes).finish(&mut frame)?;
        }
    }
    Ok(bytes)
}

/// Builds and encodes the export of `documents` off the async runtime.
pub async fn export(documents: Vec<Value>, format: Format) -> Result<Vec<u8>, QueryError> {
    tokio::task::spawn_blocking(move || frame(&documents).and_then(|f| encode(f, format)))
        .await
        .map_err(|e| QueryError::Unexpected(e.into()))?
        .map_err(|e| QueryError::Unexpected(anyhow::Error::from(e).context("failed to write the export")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flattens_documents_with_nulls_and_targets() {
        let doc = |org: Value, opened: u64, mean: Value| {
            json!({
                "fiscal_year": "2024-2025", "organization_id": org,
                "consultations": {"opened": opened, "on_platform": 1, "third_party": 0, "with_digital_participation": 1, "closed": 0, "with_results_published": 0},
                "participation": {"unique_participants": 2, "contributions": 3, "visitors": 4, "visitor_conversion": 0.5,
                    "contributions_by_kind": {"comment": 3, "survey_response": 0, "proposal": 0, "vote": 0, "brief": 0}},
                "satisfaction": {"responses": 0, "mean": mean, "csat": null},
                "results": {"published_share": null, "median_days_to_results": null},
                "suggestions": {"received": 0, "answered": 0, "implemented": 0},
                "targets": [{"id": "platform_growth", "value": null, "target": 0.5, "numerator": 1, "denominator": 0, "met": null}]
            })
        };
        let frame = frame(&[doc(Value::Null, 2, Value::Null), doc(json!("MSSS"), 1, json!(4.5))]).unwrap();
        assert_eq!(frame.width(), COLUMNS.len() + TARGET_FIELDS.len());
        assert_eq!(frame.height(), 2);
        let csv = String::from_utf8(encode(frame, Format::Csv).unwrap()).unwrap();
        let mut lines = csv.lines();
        assert!(lines.next().unwrap().starts_with("fiscal_year,organization_id,consultations_opened,"));
        assert!(lines.next().unwrap().starts_with("2024-2025,,2,1,0,1,0,0,2,3,3,0,0,0,0,4,0.5,0,,,"), "{csv}");
        assert!(csv.ends_with(",0.5,1,0,\n"), "{csv}");
    }
}
