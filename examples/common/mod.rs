//! What the benchmarks share: their command line, the release binary, the synthetic
//! history, posting NDJSON bodies with bounded concurrency, waiting for lag 0, percentiles,
//! peak RSS, and (from the test suite) private Tansu and ClickHouse servers.
#![allow(dead_code)]

#[path = "../../tests/common/services.rs"]
pub mod services;
pub use services::free_port;

use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const INGEST: &str = "bench-ingest";

/// Returns the command line `[EVENTS] [BATCH] [CONCURRENCY]`, defaulting to 1,000,000 events
/// in batches of 1,000 with 4 requests in flight.
pub fn bench_args() -> (usize, usize, usize) {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numeric arguments")).collect();
    (args.first().copied().unwrap_or(1_000_000), args.get(1).copied().unwrap_or(1_000), args.get(2).copied().unwrap_or(4))
}

/// Returns the `agora` binary built beside this example (release, for figures worth quoting).
pub fn agora_binary() -> anyhow::Result<std::path::PathBuf> {
    let binary = std::env::current_exe()?.parent().and_then(|p| p.parent()).map(|p| p.join("agora")).expect("target folder");
    anyhow::ensure!(binary.exists(), "build the server first: cargo build --release ({} missing)", binary.display());
    Ok(binary)
}

/// Events generated at a time: longer histories are made of segments, each with a seed of
/// its own and its consultation and contribution ids suffixed, so that 10M events never sit in
/// memory as JSON values at once.
const SEGMENT: usize = 1_000_000;

/// Calls `each` with `count` events of the synthetic history (the demo's, scaled), a
/// segment at a time.
pub fn synthetic_each(count: usize, mut each: impl FnMut(Value)) {
    eprintln!("generating {count} events");
    let defaults = agora::synth::SynthOptions::default();
    let (mut left, mut segment) = (count, 0u64);
    while left > 0 {
        let size = left.min(SEGMENT);
        let options = agora::synth::SynthOptions { scale: size as f64 / 620_000.0, seed: defaults.seed + segment, ..defaults.clone() };
        for mut event in agora::synth::generate(&options).into_iter().take(size) {
            if segment > 0 {
                // `get_mut`, not indexing: indexing a missing key would add it as null, and
                // the contract rejects unknown or null fields.
                if let Some(id) = event.get_mut("consultation_id") {
                    suffix(id, segment);
                }
                if let Some(id) = event.get_mut("data").and_then(|d| d.get_mut("contribution_id")) {
                    suffix(id, segment);
                }
            }
            each(event);
            left -= 1;
        }
        segment += 1;
    }
}

/// Appends `-s{segment}` to a string id; leaves anything else alone.
fn suffix(id: &mut Value, segment: u64) {
    if let Some(text) = id.as_str() {
        *id = Value::String(format!("{text}-s{segment}"));
    }
}

/// Returns `count` events of the synthetic history.
pub fn synthetic(count: usize) -> Vec<Value> {
    let mut events = Vec::with_capacity(count);
    synthetic_each(count, |event| events.push(event));
    events
}

/// Returns `count` events of the synthetic history as NDJSON bodies of `batch` events.
pub fn synthetic_bodies(count: usize, batch: usize) -> Vec<String> {
    let mut bodies = Vec::with_capacity(count.div_ceil(batch));
    let (mut body, mut lines) = (String::new(), 0);
    synthetic_each(count, |event| {
        body.push_str(&event.to_string());
        body.push('\n');
        lines += 1;
        if lines == batch {
            bodies.push(std::mem::take(&mut body));
            lines = 0;
        }
    });
    if lines > 0 {
        bodies.push(body);
    }
    bodies
}
pub const READ: &str = "bench-read";

/// Posts every body to `{url}/v1/events`, `concurrency` at a time, asserting 202s; returns
/// each request's latency.
pub async fn post_all(client: &reqwest::Client, url: &str, bodies: Vec<String>, concurrency: usize) -> anyhow::Result<Vec<Duration>> {
    let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = Vec::new();
    for body in bodies {
        let permit = semaphore.clone().acquire_owned().await?;
        let client = client.clone();
        let endpoint = format!("{url}/v1/events");
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let response = client
                .post(endpoint)
                .bearer_auth(INGEST)
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await
                .expect("post");
            assert_eq!(response.status(), 202);
            let reply: Value = response.json().await.expect("202 reply");
            let elapsed = sent.elapsed();
            drop(permit);
            // A benchmark of refused events would measure nothing: every event must be accepted.
            assert_eq!(reply["rejected"], serde_json::json!([]), "the benchmark's events must all be accepted");
            elapsed
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.push(task.await?);
    }
    Ok(latencies)
}

/// Polls `/v1/pipeline` until `lag_events` is 0: the served figures reflect every event.
/// What posting a history to `agora serve` took: each request's latency, the time until the
/// last 202, and the time until `/v1/pipeline` reported lag 0, both from the first request.
pub struct Posted {
    pub latencies: Vec<Duration>,
    pub ingested: Duration,
    pub projected: Duration,
}

/// Posts `bodies` to the `serve` role at `url`, `concurrency` at a time, and waits until the
/// projector caught up.
pub async fn post_and_project(client: &reqwest::Client, url: &str, bodies: Vec<String>, concurrency: usize) -> anyhow::Result<Posted> {
    eprintln!("posting {} batches to {url}, {concurrency} at a time", bodies.len());
    let started = Instant::now();
    let latencies = post_all(client, url, bodies, concurrency).await?;
    let ingested = started.elapsed();
    wait_caught_up(client, url).await?;
    Ok(Posted { latencies, ingested, projected: started.elapsed() })
}

/// Polls `/health/ready` of the role at `url` until it answers 200.
pub async fn wait_ready(client: &reqwest::Client, url: &str) {
    while client.get(format!("{url}/health/ready")).send().await.map(|r| !r.status().is_success()).unwrap_or(true) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn wait_caught_up(client: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    wait_pipeline_zero(client, url, "lag_events").await
}

/// Polls `/v1/pipeline` until its counter `field` is 0 (`projected_lag_events`: the store
/// holds every event, whether or not the served figures reflect them yet).
pub async fn wait_pipeline_zero(client: &reqwest::Client, url: &str, field: &str) -> anyhow::Result<()> {
    loop {
        let pipeline: Value = client.get(format!("{url}/v1/pipeline")).bearer_auth(READ).send().await?.json().await?;
        if pipeline[field] == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Returns the `q` quantile of `samples`, in milliseconds.
pub fn pct(samples: &mut [Duration], q: f64) -> f64 {
    samples.sort_unstable();
    let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples[i].as_secs_f64() * 1_000.0
}

/// Stops a child process (SIGKILL) and reaps it.
pub fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Returns a child's peak resident set (VmHWM), as the kernel prints it.
/// CPU time (user + system) `child` has used so far, from `/proc/<pid>/stat`: a figure that,
/// unlike a rate, does not move with what else the machine runs.
pub fn cpu_time(child: &Child) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks: u64 = fields.get(11..13).map(|f| f.iter().filter_map(|t| t.parse::<u64>().ok()).sum()).unwrap_or(0);
    // The kernel's USER_HZ, 100 on Linux.
    Duration::from_millis(ticks * 10)
}

pub fn peak_rss(child: &Child) -> String {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    status.lines().find(|l| l.starts_with("VmHWM")).map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}
