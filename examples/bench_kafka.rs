//! Benchmark of the Kafka pipeline next to librdkafka's own rates, on one broker in one run.
//!
//! 1. raw producer: the same payloads produced straight to a topic of their own with the
//!    producer settings Agora uses (idempotent, acks=all, zstd, linger 5 ms);
//! 2. raw consumer: that topic read back whole;
//! 3. Agora's ingest role alone (`agora ingest`, release binary) takes the events by
//!    `POST /v1/events` in NDJSON batches, to a topic of its own: the ingest-only rate;
//! 4. raw producer again, to a fresh topic: Agora's ingest rate is compared with the mean of
//!    the two raw runs around it;
//! 5. Agora end to end: `agora serve` (Kafka log, embedded store) takes them again, to the
//!    default topic; then the time until `/v1/pipeline` reports lag 0.
//!
//! The broker is a private Tansu started from `AGORA_TANSU_BIN` (see scripts/test.sh), or
//! the one `AGORA_BENCH_BROKERS` names.
//!
//! cargo build --release && cargo run --release --example bench_kafka -- [EVENTS] [BATCH] [CONCURRENCY]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

mod common;
use common::services::Broker;
use common::{
    agora_binary, bench_args, cpu_time, free_port, pct, peak_rss, post_all, post_and_project, stop, synthetic, wait_ready, Posted, INGEST,
    READ,
};

const PARTITIONS: i32 = 6;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (events_wanted, batch, concurrency) = bench_args();

    let binary = agora_binary()?;

    // The test suite's private broker (stopped when dropped, also when the benchmark fails).
    let (brokers, broker) = match std::env::var("AGORA_BENCH_BROKERS") {
        Ok(brokers) => (brokers, None),
        Err(_) => {
            let broker = tokio::task::spawn_blocking(Broker::start).await?;
            (broker.address.clone(), Some(broker))
        }
    };

    let events = synthetic(events_wanted);
    let total = events.len();
    let lines: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            let key = e["consultation_id"].as_str().or(e["organization_id"].as_str()).unwrap_or_default().to_owned();
            (key, e.to_string())
        })
        .collect();
    let bodies: Vec<String> = events.chunks(batch).map(|chunk| chunk.iter().map(|e| e.to_string() + "\n").collect()).collect();
    drop(events);

    // 1. librdkafka's own producer, same settings as Agora's. It runs again after Agora's
    //    ingest (4.), so that a broker slowing as it fills, or a busier machine, does not
    //    favour either side: Agora's ingest rate is compared with the mean of the two.
    let raw_topic = "bench.raw";
    let raw_produced = raw_produce(&brokers, raw_topic, &lines).await?;

    // 2. librdkafka's own consumer over that topic: a group member with the settings Agora's
    //    projector uses, timed from its first record (so the group join is not counted). A
    //    bare `assign` from the beginning stalled on Tansu 0.6 between 0.57M and 0.88M of 1M
    //    records: after the fetch queue's back-off, three partitions delivered nothing more
    //    (BENCHMARKS.md).
    eprintln!("raw consumer");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "bench-raw")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .create()?;
    consumer.subscribe(&[raw_topic])?;
    let mut started = None;
    let mut consumed = 0;
    let mut next = vec![0; PARTITIONS as usize];
    let mut last_progress = Instant::now();
    while consumed < total {
        match consumer.poll(Duration::from_millis(200)) {
            Some(message) => {
                let message = message?;
                started.get_or_insert_with(Instant::now);
                // Count each record once, should the broker hand one out twice.
                let next = &mut next[message.partition() as usize];
                if message.offset() >= *next {
                    *next = message.offset() + 1;
                    consumed += 1;
                    last_progress = Instant::now();
                }
            }
            None if last_progress.elapsed() > Duration::from_secs(60) => {
                anyhow::bail!("raw consumer stalled at {consumed} of {total}")
            }
            None => {}
        }
    }
    let started = started.expect("records were consumed");
    let raw_consume = started.elapsed();
    drop(consumer);

    // 3. Agora's ingest role alone, on a topic of its own: the ingest-only rate, on the same
    //    two cores the raw producer had to itself (no projector beside it).
    let client = reqwest::Client::new();
    let (mut ingest_only, url, _ingest_dir) = spawn_agora(&binary, "ingest", &brokers, "bench.ingest-only")?;
    wait_ready(&client, &url).await;
    eprintln!("agora ingest: posting {total} events in {} batches of {batch}, {concurrency} at a time", bodies.len());
    let started = Instant::now();
    let cpu_before = cpu_time(&ingest_only);
    let mut ingest_latencies = post_all(&client, &url, bodies.clone(), concurrency).await?;
    let ingested_alone = started.elapsed();
    let ingest_cpu = cpu_time(&ingest_only) - cpu_before;
    let ingest_rss = peak_rss(&ingest_only);
    stop(&mut ingest_only);

    // 4. (see 1.) librdkafka's own producer again, to a fresh topic.
    let raw_produced_after = raw_produce(&brokers, "bench.raw-after", &lines).await?;

    // 5. Agora end to end: `agora serve`, the projector folding while ingest takes events.
    let (mut server, url, _serve_dir) = spawn_agora(&binary, "serve", &brokers, "agora.events.v1")?;
    wait_ready(&client, &url).await;
    let Posted { latencies: mut post_latencies, ingested, projected } = post_and_project(&client, &url, bodies, concurrency).await?;
    let peak_rss = peak_rss(&server);
    stop(&mut server);
    drop(broker);

    let rate = |d: Duration| total as f64 / d.as_secs_f64();
    println!("events:                  {total} in batches of {batch}, {concurrency} concurrent requests, {PARTITIONS} partitions");
    let raw_rate = (rate(raw_produced) + rate(raw_produced_after)) / 2.0;
    println!(
        "raw librdkafka producer: {raw_rate:.0} events/s: {:.0} before Agora's ingest ({:.2} s), {:.0} after ({:.2} s)",
        rate(raw_produced),
        raw_produced.as_secs_f64(),
        rate(raw_produced_after),
        raw_produced_after.as_secs_f64()
    );
    println!("raw librdkafka consumer: {:.0} events/s ({:.2} s)", rate(raw_consume), raw_consume.as_secs_f64());
    println!(
        "agora ingest role alone: {:.0} events/s ({:.2} s), {:.0} % of the raw producer; {:.1} µs of CPU per event; POST p50 {:.1} ms, p99 {:.1} ms; peak RSS {ingest_rss}",
        rate(ingested_alone),
        ingested_alone.as_secs_f64(),
        100.0 * rate(ingested_alone) / raw_rate,
        ingest_cpu.as_secs_f64() * 1e6 / total as f64,
        pct(&mut ingest_latencies, 0.50),
        pct(&mut ingest_latencies, 0.99)
    );
    println!(
        "agora serve, ingest:     {:.0} events/s ({:.2} s), {:.0} % of the raw producer",
        rate(ingested),
        ingested.as_secs_f64(),
        100.0 * rate(ingested) / raw_rate
    );
    println!("agora POST to projected: {:.0} events/s ({:.2} s to lag 0)", rate(projected), projected.as_secs_f64());
    println!("POST /v1/events (serve): p50 {:.1} ms, p99 {:.1} ms", pct(&mut post_latencies, 0.50), pct(&mut post_latencies, 0.99));
    println!("agora serve peak RSS:    {peak_rss}");
    Ok(())
}

/// Produces `lines` (key, payload) to a new `topic` with Agora's producer settings and returns
/// the time until the broker acknowledged the last one.
async fn raw_produce(brokers: &str, topic: &str, lines: &[(String, String)]) -> anyhow::Result<Duration> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    admin.create_topics(&[NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1))], &AdminOptions::new()).await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "zstd")
        .set("linger.ms", "5")
        .create()?;
    eprintln!("raw producer: {} records to {topic}", lines.len());
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(lines.len());
    for (key, payload) in lines {
        let mut record = FutureRecord::to(topic).key(key.as_str()).payload(payload.as_str());
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                Err((_, returned)) => {
                    record = returned;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
    for delivery in deliveries {
        delivery.await?.map_err(|(e, _)| e)?;
    }
    Ok(started.elapsed())
}

/// Starts the release `agora` with `role` (`ingest` or `serve`) over the Kafka log on `topic`
/// and a fresh data folder, and returns it with its base URL and that folder.
fn spawn_agora(binary: &std::path::Path, role: &str, brokers: &str, topic: &str) -> anyhow::Result<(Child, String, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let child = Command::new(binary)
        .args([role, "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.path())
        .env("AGORA_KAFKA_BROKERS", brokers)
        .env("AGORA_KAFKA_TOPIC", topic)
        .env("AGORA_KAFKA_SESSION_TIMEOUT_MS", "6000")
        .env("AGORA_KAFKA_HEARTBEAT_MS", "500")
        .env("AGORA_INGEST_TOKENS", format!("bench:{INGEST}"))
        .env("AGORA_READ_TOKENS", format!("*:{READ}"))
        .env("AGORA_PSEUDONYM_KEY", "bench-key")
        .env("AGORA_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?;
    Ok((child, format!("http://127.0.0.1:{port}"), dir))
}
