//! `agora import FILE --url … --token …`: posts an NDJSON file to an ingest role in batches,
//! with a progress bar, retrying batches the log could not take (503, connection errors)
//! with back-off, and reporting every rejected line.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::progress;

/// What an import did.
#[derive(Debug, Default)]
pub struct ImportSummary {
    pub accepted: u64,
    /// (line number in the file, errors)
    pub rejected: Vec<(u64, Vec<String>)>,
    pub elapsed: Duration,
}

#[derive(Deserialize)]
struct Reply {
    accepted: u64,
    rejected: Vec<RejectedItem>,
}

#[derive(Deserialize)]
struct RejectedItem {
    index: u64,
    errors: Vec<String>,
}

const ATTEMPTS: u32 = 6;

/// Posts `file` to the ingest role at `url` in batches of `batch_size` lines.
pub async fn import(file: &Path, url: &str, token: &str, batch_size: usize, show_progress: bool) -> anyhow::Result<ImportSummary> {
    let endpoint =
        if url.trim_end_matches('/').ends_with("/v1/events") { url.to_owned() } else { format!("{}/v1/events", url.trim_end_matches('/')) };
    let handle = tokio::fs::File::open(file).await.with_context(|| format!("failed to open {}", file.display()))?;
    let size = handle.metadata().await?.len();
    let bar = if show_progress { progress(size, "importing") } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>12} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let client = reqwest::Client::builder().timeout(Duration::from_secs(120)).build()?;
    let started = Instant::now();
    let mut summary = ImportSummary::default();
    let mut lines = BufReader::new(handle).lines();
    let mut batch = String::new();
    let mut batch_lines: Vec<u64> = Vec::with_capacity(batch_size);
    let mut line_number = 0u64;
    loop {
        let line = lines.next_line().await.with_context(|| format!("failed to read {}", file.display()))?;
        if let Some(line) = &line {
            line_number += 1;
            bar.inc(line.len() as u64 + 1);
            if !line.trim().is_empty() {
                batch.push_str(line);
                batch.push('\n');
                batch_lines.push(line_number);
            }
        }
        if batch_lines.len() >= batch_size || (line.is_none() && !batch_lines.is_empty()) {
            let reply = post_batch(&client, &endpoint, token, std::mem::take(&mut batch)).await?;
            summary.accepted += reply.accepted;
            for item in reply.rejected {
                let line = batch_lines.get(item.index as usize).copied().unwrap_or(0);
                summary.rejected.push((line, item.errors));
            }
            batch_lines.clear();
            bar.set_message(format!("{} accepted", summary.accepted));
        }
        if line.is_none() {
            break;
        }
    }
    bar.finish();
    summary.elapsed = started.elapsed();
    Ok(summary)
}

async fn post_batch(client: &reqwest::Client, endpoint: &str, token: &str, body: String) -> anyhow::Result<Reply> {
    let mut backoff = Duration::from_millis(250);
    for attempt in 1..=ATTEMPTS {
        let sent = client
            .post(endpoint)
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .body(body.clone())
            .send()
            .await;
        let retry_reason = match sent {
            Ok(response) if response.status() == reqwest::StatusCode::ACCEPTED => {
                return response.json().await.context("failed to read the ingest reply");
            }
            Ok(response) if response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => "ingest answered 503".to_string(),
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                bail!("ingest refused the batch with {status}: {text}");
            }
            Err(e) if e.is_connect() || e.is_timeout() => format!("cannot reach ingest: {e}"),
            Err(e) => return Err(e).context("failed to post a batch"),
        };
        if attempt == ATTEMPTS {
            bail!("giving up after {ATTEMPTS} attempts: {retry_reason}");
        }
        tracing::warn!(attempt, reason = retry_reason, "batch not taken; retrying");
        tokio::time::sleep(backoff).await;
        backoff *= 2;
    }
    unreachable!("the loop returns or bails on its last attempt")
}
