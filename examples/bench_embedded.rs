//! Benchmark of the embedded pipeline, end to end against the real release binary:
//! `agora serve` runs as a child process on a fresh data folder; this program posts N
//! synthetic events in NDJSON batches, waits until `/v1/pipeline` reports lag 0, then
//! measures `GET /v1/indicators` latency and reads the server's peak RSS.
//!
//! cargo build --release && cargo run --release --example bench_embedded -- [EVENTS] [BATCH] [CONCURRENCY]

use std::process::{Command, Stdio};
use std::time::Instant;

mod common;
use common::{agora_binary, bench_args, free_port, pct, peak_rss, post_and_project, synthetic_bodies, wait_ready, Posted, INGEST, READ};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (events_wanted, batch, concurrency) = bench_args();

    let binary = agora_binary()?;

    let total = events_wanted;
    let bodies = synthetic_bodies(total, batch);

    let dir = tempfile::tempdir()?;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut server = Command::new(&binary)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.path())
        .env("AGORA_INGEST_TOKENS", format!("bench:{INGEST}"))
        .env("AGORA_READ_TOKENS", format!("*:{READ}"))
        .env("AGORA_PSEUDONYM_KEY", "bench-key")
        .env("AGORA_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?;
    let client = reqwest::Client::new();
    wait_ready(&client, &url).await;

    let Posted { latencies: mut post_latencies, ingested, projected } = post_and_project(&client, &url, bodies, concurrency).await?;

    let mut keys = Vec::new();
    for fy in 2021..=2026 {
        for org in ["", "MSSS", "MEQ", "MCC", "SCT", "RAMQ", "MTMD"] {
            keys.push(format!(
                "fiscal_year={fy}-{}{}",
                fy + 1,
                if org.is_empty() { String::new() } else { format!("&organization_id={org}") }
            ));
        }
    }
    let mut cold = Vec::new();
    for key in &keys {
        let t = Instant::now();
        let response = client.get(format!("{url}/v1/indicators?{key}")).bearer_auth(READ).send().await?;
        assert_eq!(response.status(), 200);
        response.bytes().await?;
        cold.push(t.elapsed());
    }
    let mut warm = Vec::new();
    for i in 0..2_000 {
        let key = &keys[(i * 7919) % keys.len()];
        let t = Instant::now();
        let response = client.get(format!("{url}/v1/indicators?{key}")).bearer_auth(READ).send().await?;
        response.bytes().await?;
        warm.push(t.elapsed());
    }
    let peak_rss = peak_rss(&server);
    server.kill()?;
    server.wait()?;

    println!("events:                  {total} in batches of {batch}, {concurrency} concurrent requests");
    println!("ingest only:             {:.0} events/s ({:.2} s)", total as f64 / ingested.as_secs_f64(), ingested.as_secs_f64());
    println!("POST to projected:       {:.0} events/s ({:.2} s to lag 0)", total as f64 / projected.as_secs_f64(), projected.as_secs_f64());
    println!("POST /v1/events:         p50 {:.1} ms, p99 {:.1} ms", pct(&mut post_latencies, 0.50), pct(&mut post_latencies, 0.99));
    println!(
        "indicators, computed:    p50 {:.1} ms, p99 {:.1} ms ({} distinct queries, first call each)",
        pct(&mut cold, 0.50),
        pct(&mut cold, 0.99),
        cold.len()
    );
    println!("indicators, cached:      p50 {:.2} ms, p99 {:.2} ms ({} calls)", pct(&mut warm, 0.50), pct(&mut warm, 0.99), warm.len());
    println!("agora serve peak RSS:    {peak_rss}");
    Ok(())
}
