//! `agora export`: the open-data export of the indicators (see `agora_query::exports`) written
//! to a file, from the store the configuration names, without a running server.

use std::io::Write;
use std::path::Path;

use agora_query::exports::{self, Format};
use agora_query::{QueryMetrics, QueryState, ReadScope};
use agora_schemas::FiscalYear;
use anyhow::Context;
use prometheus::Registry;

use crate::app::Backends;
use crate::config::Config;

/// Writes the export of every fiscal year from `from` to `to` (by default all the store
/// holds), for the whole government and every public body, to `output` (CSV to standard
/// output when `None`). Returns the number of rows.
pub async fn export(
    config: &Config,
    backends: Backends,
    format: Format,
    from: Option<FiscalYear>,
    to: Option<FiscalYear>,
    output: Option<&Path>,
) -> anyhow::Result<usize> {
    if format == Format::Parquet && output.is_none() {
        anyhow::bail!("--output is required for Parquet, a binary format");
    }
    let state =
        QueryState::new(backends.store, backends.log, Vec::new(), false, config.targets.clone(), QueryMetrics::register(&Registry::new())?);
    let documents = exports::documents(&state, &ReadScope::All, from, to).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let rows = documents.len();
    let bytes = exports::export(documents, format).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    match output {
        Some(path) => std::fs::write(path, bytes).with_context(|| format!("failed to write {}", path.display()))?,
        None => std::io::stdout().lock().write_all(&bytes).context("failed to write the export")?,
    }
    Ok(rows)
}
