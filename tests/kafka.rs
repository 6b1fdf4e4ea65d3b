//! The Kafka event log against a real Kafka-protocol broker (Tansu), with the real binary
//! where processes die: a projector killed mid-run or between its store write and its
//! commit, two projectors sharing the partitions while one dies, the broker frozen during
//! ingestion, and a poison record dead-lettered without stalling its partition. Each test
//! compares every figure with an embedded run of the same events.

mod common;

use std::time::Duration;

use agora::app::Roles;
use agora_eventlog::KafkaLog;
use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Starts a broker and ingests `events` through an ingest role alone, so nothing is
/// projected yet; returns the broker and a client of the log.
async fn logged_on_kafka(backend: Backend, events: &[Value]) -> (Services, KafkaLog) {
    let services = tokio::task::spawn_blocking(move || Services::start(backend)).await.unwrap();
    let ingest = TestServer::launch(tempfile::tempdir().unwrap(), Roles::INGEST, services, &[]).await;
    ingest.ingest(events).await;
    let (_, services) = ingest.stop().await;
    let log = KafkaLog::open(kafka_settings(&services)).await.unwrap();
    assert_eq!(total(&log.end_positions().await.unwrap()), events.len() as i64);
    (services, log)
}

fn env_of(services: &Services, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = services.env();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

fn projector(dir: &std::path::Path, services: &Services, port: Option<u16>, extra: &[(&str, &str)]) -> AgoraProcess {
    let env = env_of(services, extra);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    spawn_agora(&["project"], dir, port, &env)
}

async fn committed(log: &KafkaLog) -> i64 {
    log.group_positions().await.map(|p| total(&p)).unwrap_or(0)
}

async fn wait_committed(log: &KafkaLog, reached: impl Fn(i64) -> bool) -> bool {
    wait_until(Duration::from_secs(120), || async { reached(committed(log).await) }).await
}

/// Reads every figure through a query role over `dir` (the store) and `services`.
async fn figures_in(dir: tempfile::TempDir, services: Services) -> Vec<Value> {
    let query = TestServer::launch(dir, Roles::QUERY, services, &[]).await;
    all_figures(&query).await
}

fn kill(child: &mut AgoraProcess) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// The crash tests run with either store behind the Kafka log.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod embedded_store { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::common::Backend::Kafka).await } )* }
        mod clickhouse_store { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::common::Backend::KafkaClickHouse).await } )* }
    };
}

on_both_stores!(
    projector_killed_mid_run_restarts_to_identical_figures,
    projector_aborted_between_store_write_and_commit_counts_nothing_twice
);

async fn projector_killed_mid_run_restarts_to_identical_figures(backend: Backend) {
    let events = history(0.03, 7);
    let expected = reference_figures(&events).await;
    let (services, log) = logged_on_kafka(backend, &events).await;
    let end = events.len() as i64;
    let dir = tempfile::tempdir().unwrap();

    let small_batches = [("AGORA_PROJECTOR_BATCH_SIZE", "50")];
    let mut first = projector(dir.path(), &services, None, &small_batches);
    assert!(wait_committed(&log, |c| c > 0).await, "the projector never committed");
    kill(&mut first);
    let at_kill = committed(&log).await;
    assert!(at_kill < end, "the kill should land before the end of the log ({at_kill} of {end})");

    let mut second = projector(dir.path(), &services, None, &small_batches);
    assert!(wait_committed(&log, |c| c == end).await, "the restarted projector did not finish");
    kill(&mut second);
    assert_eq!(figures_in(dir, services).await, expected);
}

async fn projector_aborted_between_store_write_and_commit_counts_nothing_twice(backend: Backend) {
    let events = history(0.01, 8);
    let expected = reference_figures(&events).await;
    let (services, log) = logged_on_kafka(backend, &events).await;
    let end = events.len() as i64;
    let dir = tempfile::tempdir().unwrap();

    // The first batch reaches the store, then the process aborts before committing it.
    let mut crashing = projector(dir.path(), &services, None, &[("AGORA_FAILPOINT", "projector.before_commit")]);
    assert!(!crashing.wait().unwrap().success(), "the failpoint should abort the projector");
    assert_eq!(committed(&log).await, 0, "nothing may be committed by the aborted projector");

    // Its successor reads that batch again from the last commit and applies it a second time.
    let mut restarted = projector(dir.path(), &services, None, &[]);
    assert!(wait_committed(&log, |c| c == end).await);
    kill(&mut restarted);
    assert_eq!(figures_in(dir, services).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_projectors_share_partitions_and_one_takes_over_when_the_other_dies() {
    let events = history(0.03, 9);
    let expected = reference_figures(&events).await;
    let half = events.len() / 2;
    let (services, log) = logged_on_kafka(Backend::Kafka, &events[..half]).await;
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();

    let small_batches = [("AGORA_PROJECTOR_BATCH_SIZE", "50")];
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = projector(dir.path(), &services, Some(port_a), &small_batches);
    let mut b = projector(dir.path(), &services, Some(port_b), &small_batches);
    let owned = |port: u16| {
        let client = client.clone();
        async move { metric(&client, &format!("http://127.0.0.1:{port}"), "agora_projector_partitions_owned").await.unwrap_or(0.0) }
    };
    let shared = wait_until(Duration::from_secs(60), || async { owned(port_a).await >= 1.0 && owned(port_b).await >= 1.0 }).await;
    assert!(shared, "both projectors should own partitions");
    assert_eq!(owned(port_a).await + owned(port_b).await, 3.0, "the three partitions are split between the two");

    kill(&mut a);
    // The rest of the history arrives after the kill: some of it in the dead member's partitions.
    let ingest = TestServer::launch(tempfile::tempdir().unwrap(), Roles::INGEST, services, &[]).await;
    ingest.ingest(&events[half..]).await;
    let (_, services) = ingest.stop().await;
    let end = events.len() as i64;
    assert!(wait_committed(&log, |c| c == end).await, "the survivor did not take the partitions over");
    assert_eq!(owned(port_b).await, 3.0);
    kill(&mut b);
    assert_eq!(figures_in(dir, services).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_frozen_during_ingestion_answers_503_and_resent_events_count_once() {
    let events = history(0.01, 10);
    let expected = reference_figures(&events).await;
    let services = tokio::task::spawn_blocking(|| Services::start(Backend::Kafka)).await.unwrap();
    let server = TestServer::launch(
        tempfile::tempdir().unwrap(),
        Roles::ALL,
        services,
        &[("AGORA_KAFKA_PRODUCE_TIMEOUT_MS", "1500"), ("AGORA_KAFKA_REQUEST_TIMEOUT_MS", "1500")],
    )
    .await;
    let batches: Vec<&[Value]> = events.chunks(500).collect();
    let frozen_at = batches.len() / 2;
    let mut refused = 0;
    for (i, batch) in batches.iter().enumerate() {
        if i == frozen_at {
            server.services.broker.as_ref().unwrap().freeze();
        }
        let (status, reply) = server.post_events(&Value::Array(batch.to_vec())).await;
        if i == frozen_at {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "a frozen broker must give 503: {reply}");
            assert!(reply.get("accepted").is_none(), "a 503 reports nothing accepted: {reply}");
            refused += 1;
            server.services.broker.as_ref().unwrap().thaw();
            // The client re-sends what was refused, as `agora import` does.
            let resent = wait_until(Duration::from_secs(60), || async {
                server.post_events(&Value::Array(batch.to_vec())).await.0 == StatusCode::ACCEPTED
            })
            .await;
            assert!(resent, "the thawed broker should take the batch again");
        } else {
            assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
        }
    }
    assert_eq!(refused, 1);
    server.wait_caught_up().await;
    assert_eq!(all_figures(&server).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restarted_during_ingestion_counts_each_accepted_event_once_and_no_refused_one() {
    let events = history(0.01, 12);
    let batches: Vec<&[Value]> = events.chunks(400).collect();
    let (stopped_at, never_resent) = (batches.len() / 2, batches.len() / 2 + 1);
    // What an uninterrupted run gives for every event but the batch that is refused and
    // never sent again.
    let kept: Vec<Value> = batches.iter().enumerate().filter(|(i, _)| *i != never_resent).flat_map(|(_, b)| b.to_vec()).collect();
    let expected = reference_figures(&kept).await;

    let broker = tokio::task::spawn_blocking(Broker::start_durable).await.unwrap();
    let services = Services { broker: Some(broker), clickhouse: None };
    let mut server =
        TestServer::launch(tempfile::tempdir().unwrap(), Roles::ALL, services, &[("AGORA_KAFKA_PRODUCE_TIMEOUT_MS", "1500")]).await;
    for batch in &batches[..stopped_at] {
        let (status, reply) = server.post_events(&Value::Array(batch.to_vec())).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
    }
    // The broker goes away: both batches are refused, with nothing reported accepted.
    tokio::task::block_in_place(|| server.services.broker.as_mut().unwrap().kill());
    for i in [stopped_at, never_resent] {
        let (status, reply) = server.post_events(&Value::Array(batches[i].to_vec())).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "a stopped broker must give 503: {reply}");
        assert!(reply.get("accepted").is_none(), "a 503 reports nothing accepted: {reply}");
    }
    // It comes back over the same storage; the client re-sends the first refused batch only.
    tokio::task::block_in_place(|| server.services.broker.as_mut().unwrap().start_again());
    let resent = wait_until(Duration::from_secs(90), || async {
        server.post_events(&Value::Array(batches[stopped_at].to_vec())).await.0 == StatusCode::ACCEPTED
    })
    .await;
    assert!(resent, "the restarted broker should take the batch again");
    for batch in &batches[never_resent + 1..] {
        let (status, reply) = server.post_events(&Value::Array(batch.to_vec())).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
    }
    server.wait_caught_up().await;
    assert_eq!(all_figures(&server).await, expected);
    // The log kept everything accepted before the restart: its size is every batch but one,
    // plus whatever copies of the re-sent batch the failed attempts left.
    let log = KafkaLog::open(kafka_settings(&server.services)).await.unwrap();
    let logged = total(&log.end_positions().await.unwrap()) as usize;
    assert!(logged >= kept.len(), "{logged} records in the log, {} accepted", kept.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_record_goes_to_the_dead_letter_topic_and_its_partition_moves_on() {
    let server = TestServer::start_on(Backend::Kafka, &[]).await;
    let settings = kafka_settings(&server.services);
    let log = KafkaLog::open(settings.clone()).await.unwrap();
    // Same key as the consultation's events: the poison sits in their partition, before them.
    log.append(vec![(b"c-poison".to_vec(), b"{not an event".to_vec())]).await.unwrap();
    server
        .ingest(&[
            opened(1, "2022-05-01T10:00:00Z", "MSSS", "c-poison", "platform", &["online_survey"]),
            contribution(2, "2022-05-02T10:00:00Z", "MSSS", "c-poison", "p1", "k1", "comment"),
        ])
        .await;
    server.wait_caught_up().await;
    let (status, consultation) = server.get("/v1/consultations/c-poison", Some(READ_ALL)).await;
    assert_eq!(status, StatusCode::OK, "{consultation}");
    assert_eq!(consultation["contributions"], json!(1));
    let (_, pipeline) = server.get("/v1/pipeline", Some(READ_ALL)).await;
    assert_eq!(pipeline["dead_letters"], json!(1), "{pipeline}");
    assert_eq!(metric(&server.client, &server.url, "agora_projector_dead_letters_total").await, Some(1.0));

    // The dead letter keeps the payload, and says why and where from.
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .set("group.id", "test-dead-letter-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader.subscribe(&[&settings.dead_letter_topic]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let message = loop {
        if let Some(message) = reader.poll(Duration::from_millis(100)) {
            break message.unwrap().detach();
        }
        assert!(std::time::Instant::now() < deadline, "no record in the dead-letter topic");
    };
    assert_eq!(message.payload(), Some(&b"{not an event"[..]));
    let headers = message.headers().unwrap();
    let header = |key: &str| headers.iter().find(|h| h.key == key).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned());
    assert!(header("agora.reason").unwrap().contains("not a v1 event"), "{:?}", header("agora.reason"));
    assert_eq!(header("agora.source.topic").as_deref(), Some(settings.topic.as_str()));
    assert_eq!(header("agora.source.offset").as_deref(), Some("0"));
}
