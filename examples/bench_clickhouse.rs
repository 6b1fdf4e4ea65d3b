//! Benchmark of the production pipeline's store side: Kafka into ClickHouse, next to
//! `clickhouse-client` inserting the same rows, on one broker and one server in one run.
//!
//! 1. `agora ingest` (release) takes the events by `POST /v1/events`; nothing projects yet.
//! 2. `agora project` starts on that full topic; the time until `agora query` reports
//!    `projected_lag_events: 0` is the Kafka → ClickHouse rate. Its peak RSS is read before it
//!    stops. The time from there to `lag_events: 0` is the query role's refresh of its figure
//!    snapshot (every scope, folded from ClickHouse) on an idle store.
//! 3. raw: every row Agora wrote is exported (`FORMAT Native`) and inserted again by
//!    `clickhouse-client` into empty copies of the tables; the sum of those inserts' times
//!    is the raw rate for the same rows.
//! 4. `/v1/indicators`: a fresh `agora query` process answers its first call by folding
//!    every scope from ClickHouse (cold); then 2,000 calls over 36 (fiscal year, body) keys
//!    are served from its snapshot, each checking the store's version first.
//!
//! With `AGORA_BENCH_ROUNDS=N`, steps 1 and 2 run N times, each time on a fresh broker with
//! the next 1/N of the history, into the same ClickHouse database (Tansu's in-memory storage
//! gave out above 5M records); rates are over the summed times, RSS the highest round's.
//!
//! The broker is a private Tansu from `AGORA_TANSU_BIN`; the ClickHouse server a private
//! `clickhouse-server` (DESIGN.md's overrides) from `AGORA_CLICKHOUSE_SERVER_BIN`: the ones the
//! test suite starts.
//!
//! cargo build --release --bin agora --example bench_clickhouse
//! target/release/examples/bench_clickhouse [EVENTS] [BATCH] [CONCURRENCY]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::services::{Broker, ClickHouse};
use common::{
    agora_binary, bench_args, free_port, pct, peak_rss, post_all, stop, synthetic_bodies, wait_caught_up, wait_pipeline_zero, wait_ready,
    INGEST, READ,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (events_wanted, batch, concurrency) = bench_args();
    let binary = agora_binary()?;
    let work = tempfile::tempdir()?;

    // The same private servers the test suite starts (tests/common/services.rs). Tansu's
    // in-memory storage stopped answering once it held somewhere above 5M records, so a
    // longer history can go through several brokers one after the other
    // (AGORA_BENCH_ROUNDS): each round a fresh broker takes the next part of the history and
    // the projector folds it into the same ClickHouse database.
    let mut clickhouse = tokio::task::spawn_blocking(ClickHouse::start).await?;
    let tcp_port = clickhouse.tcp_port;
    let rounds: usize = std::env::var("AGORA_BENCH_ROUNDS").ok().map(|r| r.parse()).transpose()?.unwrap_or(1).max(1);
    let env = |broker: &Broker| {
        [
            ("AGORA_KAFKA_BROKERS", broker.address.clone()),
            ("AGORA_KAFKA_SESSION_TIMEOUT_MS", "6000".into()),
            ("AGORA_KAFKA_HEARTBEAT_MS", "500".into()),
            ("AGORA_CLICKHOUSE_URL", clickhouse.url.clone()),
            ("AGORA_CLICKHOUSE_DATABASE", "bench".into()),
            ("AGORA_INGEST_TOKENS", format!("bench:{INGEST}")),
            ("AGORA_READ_TOKENS", format!("*:{READ}")),
            ("AGORA_PSEUDONYM_KEY", "bench-key".into()),
            ("AGORA_LOG", "warn".into()),
        ]
    };
    let role = |name: &str, port: u16, broker: &Broker| -> anyhow::Result<Child> {
        Ok(Command::new(&binary)
            .args([name, "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(work.path().join(name))
            .envs(env(broker).into_iter().map(|(k, v)| (k.to_owned(), v)))
            // Projector tuning given to the benchmark (AGORA_PROJECTOR_BATCH_SIZE, …) goes through.
            .envs(std::env::vars().filter(|(k, _)| k.starts_with("AGORA_PROJECTOR_")))
            .stdout(Stdio::null())
            .spawn()?)
    };

    let total = events_wanted;
    let mut bodies = synthetic_bodies(total, batch);
    let per_round = bodies.len().div_ceil(rounds);
    let client = reqwest::Client::new();
    let (mut ingested, mut projected, mut refreshed) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let (mut first_batch, mut after_first) = (Duration::ZERO, 0usize);
    let mut post_latencies = Vec::new();
    let mut projector_rss = Vec::new();
    let mut broker = None;
    for round in 1..=rounds {
        let part: Vec<String> = bodies.drain(..per_round.min(bodies.len())).collect();
        if part.is_empty() {
            break;
        }
        let round_events = part.iter().map(|b| b.lines().count()).sum::<usize>();
        drop(broker.take());
        let current = tokio::task::spawn_blocking(Broker::start).await?;

        // 1. Fill the topic through the ingest role.
        let (ingest_port, query_port, project_port) = (free_port(), free_port(), free_port());
        let mut ingest = role("ingest", ingest_port, &current)?;
        let ingest_url = format!("http://127.0.0.1:{ingest_port}");
        wait_ready(&client, &ingest_url).await;
        eprintln!("round {round}/{rounds}, ingest: posting {} batches of {batch}, {concurrency} at a time", part.len());
        let started = Instant::now();
        post_latencies.extend(post_all(&client, &ingest_url, part, concurrency).await?);
        ingested += started.elapsed();
        stop(&mut ingest);

        // 2. Kafka → ClickHouse.
        let mut query = role("query", query_port, &current)?;
        let query_url = format!("http://127.0.0.1:{query_port}");
        wait_ready(&client, &query_url).await;
        eprintln!("round {round}/{rounds}, projector: folding the topic into clickhouse");
        let started = Instant::now();
        let mut projector = role("project", project_port, &current)?;
        // The first batch lands once the group has formed (join, assignment, first fetch).
        let (first_took, first_events) = wait_first_batch(&client, &format!("http://127.0.0.1:{project_port}")).await?;
        first_batch += first_took;
        after_first += round_events - first_events as usize;
        wait_pipeline_zero(&client, &query_url, "projected_lag_events").await?;
        let took = started.elapsed();
        projected += took;
        eprintln!("projected in {:.2} s", took.as_secs_f64());
        projector_rss.push(peak_rss(&projector));
        let started = Instant::now();
        wait_caught_up(&client, &query_url).await?;
        refreshed += started.elapsed();
        stop(&mut projector);
        stop(&mut query);
        broker = Some(current);
    }
    let broker = broker.expect("at least one round");

    // 3. The same rows through clickhouse-client.
    eprintln!("raw: clickhouse-client inserts the same rows");
    let client_bin = std::env::var("AGORA_CLICKHOUSE_CLIENT_BIN").unwrap_or_else(|_| "clickhouse-client".into());
    let sql = |query: &str| -> anyhow::Result<String> {
        let output = Command::new(&client_bin).args(["--port", &tcp_port.to_string(), "--database", "bench", "--query", query]).output()?;
        anyhow::ensure!(output.status.success(), "clickhouse-client failed on {query}: {}", String::from_utf8_lossy(&output.stderr));
        Ok(String::from_utf8(output.stdout)?)
    };
    let mut raw_rows = 0u64;
    let mut raw_insert = Duration::ZERO;
    for table in agora_store::clickhouse::TABLES {
        if sql(&format!("SELECT count() FROM {table}"))?.trim() == "0" {
            continue;
        }
        let file = work.path().join(format!("{table}.native"));
        let exported = Command::new(&client_bin)
            .args(["--port", &tcp_port.to_string(), "--database", "bench", "--query", &format!("SELECT * FROM {table} FORMAT Native")])
            .stdout(std::fs::File::create(&file)?)
            .status()?;
        anyhow::ensure!(exported.success(), "export of {table} failed");
        sql(&format!("CREATE TABLE raw_{table} AS {table}"))?;
        let started = Instant::now();
        let inserted = Command::new(&client_bin)
            .args(["--port", &tcp_port.to_string(), "--database", "bench", "--query", &format!("INSERT INTO raw_{table} FORMAT Native")])
            .stdin(std::fs::File::open(&file)?)
            .status()?;
        raw_insert += started.elapsed();
        anyhow::ensure!(inserted.success(), "insert into raw_{table} failed");
        let rows = sql(&format!("SELECT count() FROM raw_{table}"))?.trim().parse::<u64>()?;
        eprintln!("  {table}: {rows} rows");
        raw_rows += rows;
    }

    // 4. Indicators from ClickHouse.
    let keys: Vec<String> = (2021..=2026)
        .flat_map(|y| {
            let fy = format!("{y}-{}", y + 1);
            ["", "&organization_id=MSSS", "&organization_id=MCC", "&organization_id=SCT", "&organization_id=MEQ", "&organization_id=MTQ"]
                .into_iter()
                .map(move |org| format!("fiscal_year={fy}{org}"))
        })
        .collect();
    let query_port = free_port();
    let query_url = format!("http://127.0.0.1:{query_port}");
    let mut query = role("query", query_port, &broker)?;
    wait_ready(&client, &query_url).await;
    let started = Instant::now();
    let response = client.get(format!("{query_url}/v1/indicators?{}", keys[0])).bearer_auth(READ).send().await?;
    anyhow::ensure!(response.status().is_success(), "indicators {}: {}", keys[0], response.status());
    response.bytes().await?;
    let cold = started.elapsed();
    let mut cached = Vec::new();
    for i in 0..2_000 {
        let started = Instant::now();
        let response = client.get(format!("{query_url}/v1/indicators?{}", keys[i % keys.len()])).bearer_auth(READ).send().await?;
        response.bytes().await?;
        cached.push(started.elapsed());
    }
    let query_rss = peak_rss(&query);
    stop(&mut query);
    clickhouse.stop();
    drop(broker);

    let rate = |d: Duration| total as f64 / d.as_secs_f64();
    println!("events:                      {total} in batches of {batch}, {concurrency} concurrent requests, {rounds} round(s)");
    println!("ingest (POST to acknowledged): {:.0} events/s ({:.2} s)", rate(ingested), ingested.as_secs_f64());
    println!("POST /v1/events:             p50 {:.1} ms, p99 {:.1} ms", pct(&mut post_latencies, 0.50), pct(&mut post_latencies, 0.99));
    println!("kafka -> clickhouse:         {:.0} events/s ({:.2} s to projected lag 0)", rate(projected), projected.as_secs_f64());
    println!(
        "  first batch applied after: {:.2} s (group join, then up to one batch); {:.0} events/s after it",
        first_batch.as_secs_f64(),
        after_first as f64 / projected.saturating_sub(first_batch).as_secs_f64()
    );
    println!("figure snapshot refreshed:   {:.2} s later (lag_events 0)", refreshed.as_secs_f64());
    println!(
        "clickhouse-client, same rows: {raw_rows} rows in {:.2} s = {:.0} events/s; agora at {:.0} % of it",
        raw_insert.as_secs_f64(),
        rate(raw_insert),
        100.0 * rate(projected) / rate(raw_insert)
    );
    println!("/v1/indicators cold:         {:.1} ms (a fresh query role folds every scope)", cold.as_secs_f64() * 1_000.0);
    println!(
        "/v1/indicators served:       p50 {:.2} ms, p99 {:.2} ms ({} calls over {} keys)",
        pct(&mut cached, 0.50),
        pct(&mut cached, 0.99),
        cached.len(),
        keys.len()
    );
    println!(
        "agora project peak RSS:      {} (per round: {})",
        projector_rss.iter().max_by_key(|r| kb(r)).cloned().unwrap_or_default(),
        projector_rss.join(", ")
    );
    println!("agora query peak RSS:        {query_rss}");
    Ok(())
}

/// Polls the projector's `/metrics` until it has applied a batch; returns the time it took
/// and the events applied by then.
async fn wait_first_batch(client: &reqwest::Client, url: &str) -> anyhow::Result<(Duration, u64)> {
    let started = Instant::now();
    loop {
        if let Ok(response) = client.get(format!("{url}/metrics")).send().await {
            let text = response.text().await?;
            let applied = text
                .lines()
                .find_map(|l| l.strip_prefix("agora_projector_events_applied_total "))
                .and_then(|n| n.trim().parse::<u64>().ok());
            if let Some(n) = applied.filter(|&n| n > 0) {
                return Ok((started.elapsed(), n));
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads the kB figure of a [`peak_rss`] line, for comparing rounds.
fn kb(rss: &str) -> u64 {
    rss.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0)
}
