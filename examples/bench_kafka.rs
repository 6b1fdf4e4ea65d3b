//! Benchmark of the Kafka pipeline next to librdkafka's own rates, on one broker in one run.
//!
//! 1. raw producer: the same payloads produced straight to a topic of their own with the
//!    producer settings Agora uses (idempotent, acks=all, zstd, linger 5 ms);
//! 2. raw consumer: that topic read back whole;
//! 3. Agora: `agora serve` (release binary, Kafka log, embedded store) takes the events by
//!    `POST /v1/events` in NDJSON batches; then the time until `/v1/pipeline` reports lag 0.
//!
//! The broker is a private Tansu started from `AGORA_TANSU_BIN` (see scripts/test.sh), or
//! the one `AGORA_BENCH_BROKERS` names.
//!
//! cargo build --release && cargo run --release --example bench_kafka -- [EVENTS] [BATCH] [CONCURRENCY]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

mod common;
use common::services::Broker;
use common::{agora_binary, bench_args, free_port, pct, peak_rss, post_all, stop, synthetic, wait_caught_up, INGEST, READ};

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

    // 1. librdkafka's own producer, same settings as Agora's.
    let raw_topic = "bench.raw";
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", &brokers).create()?;
    admin.create_topics(&[NewTopic::new(raw_topic, PARTITIONS, TopicReplication::Fixed(1))], &AdminOptions::new()).await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "zstd")
        .set("linger.ms", "5")
        .create()?;
    eprintln!("raw producer: {total} records");
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(total);
    for (key, payload) in &lines {
        let mut record = FutureRecord::to(raw_topic).key(key.as_str()).payload(payload.as_str());
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
    let raw_produce = started.elapsed();

    // 2. librdkafka's own consumer over that topic.
    eprintln!("raw consumer");
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &brokers).set("group.id", "bench-raw").create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment.add_partition_offset(raw_topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let started = Instant::now();
    let mut consumed = 0;
    while consumed < total {
        if let Some(message) = consumer.poll(Duration::from_secs(60)) {
            message?;
            consumed += 1;
        } else {
            anyhow::bail!("raw consumer stalled at {consumed} of {total}");
        }
    }
    let raw_consume = started.elapsed();
    drop(consumer);

    // 3. Agora end to end.
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut server = Command::new(&binary)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.path())
        .env("AGORA_KAFKA_BROKERS", &brokers)
        .env("AGORA_KAFKA_SESSION_TIMEOUT_MS", "6000")
        .env("AGORA_KAFKA_HEARTBEAT_MS", "500")
        .env("AGORA_INGEST_TOKENS", format!("bench:{INGEST}"))
        .env("AGORA_READ_TOKENS", format!("*:{READ}"))
        .env("AGORA_PSEUDONYM_KEY", "bench-key")
        .env("AGORA_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?;
    let client = reqwest::Client::new();
    while client.get(format!("{url}/health/ready")).send().await.map(|r| !r.status().is_success()).unwrap_or(true) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("agora: posting {total} events in {} batches of {batch}, {concurrency} at a time", bodies.len());
    let started = Instant::now();
    let mut post_latencies = post_all(&client, &url, bodies, concurrency).await?;
    let ingested = started.elapsed();
    wait_caught_up(&client, &url).await?;
    let projected = started.elapsed();
    let peak_rss = peak_rss(&server);
    stop(&mut server);
    drop(broker);

    let rate = |d: Duration| total as f64 / d.as_secs_f64();
    println!("events:                  {total} in batches of {batch}, {concurrency} concurrent requests, {PARTITIONS} partitions");
    println!("raw librdkafka producer: {:.0} events/s ({:.2} s)", rate(raw_produce), raw_produce.as_secs_f64());
    println!("raw librdkafka consumer: {:.0} events/s ({:.2} s)", rate(raw_consume), raw_consume.as_secs_f64());
    println!(
        "agora ingest only:       {:.0} events/s ({:.2} s), {:.0} % of the raw producer",
        rate(ingested),
        ingested.as_secs_f64(),
        100.0 * rate(ingested) / rate(raw_produce)
    );
    println!("agora POST to projected: {:.0} events/s ({:.2} s to lag 0)", rate(projected), projected.as_secs_f64());
    println!("POST /v1/events:         p50 {:.1} ms, p99 {:.1} ms", pct(&mut post_latencies, 0.50), pct(&mut post_latencies, 0.99));
    println!("agora serve peak RSS:    {peak_rss}");
    Ok(())
}
