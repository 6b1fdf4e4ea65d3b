//! The ClickHouse store against a real server (Debian's `clickhouse-server`, 18.16 here)
//! behind a real Kafka-protocol broker (Tansu): the server stopped for 30 s during
//! projection, the same events delivered 10,000 times over, a fold over its memory limit,
//! and `agora ingest`, `agora project` and `agora query` run as separate processes. Each test compares every figure
//! with an embedded run of the same events.

mod common;

use std::time::Duration;

use agora::app::Roles;
use agora_eventlog::{decode, partition_key, KafkaLog};
use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Sixteen events of 2024-2025 at MSSS, one or more of every type.
fn every_kind_of_event() -> Vec<Value> {
    let bare = |n, kind, at, consultation| event(n, kind, at, "MSSS", Some(consultation), None, json!({}));
    vec![
        opened(1, "2024-05-01T10:00:00Z", "MSSS", "c1", "platform", &["online_survey"]),
        opened(2, "2024-05-02T10:00:00Z", "MSSS", "c2", "third_party", &["phone"]),
        event(3, "consultation.updated", "2024-05-03T10:00:00Z", "MSSS", Some("c2"), None, json!({"hosted_on": "platform"})),
        visit(4, "2024-05-04T10:00:00Z", "MSSS", "c1", "p1"),
        visit(5, "2024-05-04T11:00:00Z", "MSSS", "c1", "p2"),
        contribution(6, "2024-05-05T10:00:00Z", "MSSS", "c1", "p1", "k1", "comment"),
        contribution(7, "2024-05-05T11:00:00Z", "MSSS", "c1", "p2", "k2", "vote"),
        contribution(8, "2024-05-05T12:00:00Z", "MSSS", "c2", "p1", "k3", "proposal"),
        event(
            9,
            "contribution.withdrawn",
            "2024-05-06T10:00:00Z",
            "MSSS",
            Some("c1"),
            None,
            json!({"contribution_id": "k2", "reason": "moderation"}),
        ),
        bare(10, "consultation.closed", "2024-06-01T10:00:00Z", "c1"),
        bare(11, "consultation.results_published", "2024-06-11T10:00:00Z", "c1"),
        feedback(12, "2024-06-02T10:00:00Z", "MSSS", Some("c1"), "p1", 5, Some("Plus de séances le soir")),
        feedback(13, "2024-06-03T10:00:00Z", "MSSS", None, "p2", 3, Some("Un rappel par courriel")),
        event(
            14,
            "suggestion.triaged",
            "2024-06-20T10:00:00Z",
            "SCT",
            None,
            None,
            json!({"feedback_event_id": uuid(12), "status": "implemented"}),
        ),
        opened(15, "2024-07-01T10:00:00Z", "MSSS", "c3", "platform", &["online_vote"]),
        event(16, "consultation.cancelled", "2024-07-02T10:00:00Z", "MSSS", Some("c3"), None, json!({"reason": "doublon"})),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_stopped_for_30_seconds_loses_and_doubles_nothing() {
    let events = history(0.02, 41);
    let expected = reference_figures(&events).await;
    let half = events.len() / 2;
    let mut server = TestServer::start_on(Backend::KafkaClickHouse, &[]).await;
    server.ingest(&events[..half]).await;
    server.wait_caught_up().await;

    let clickhouse = server.services.clickhouse.as_mut().unwrap();
    tokio::task::block_in_place(|| clickhouse.stop());
    // Ingest does not need the store: the rest of the history is accepted meanwhile.
    server.ingest(&events[half..]).await;
    // For 30 s the store is down: every figure request is refused as unavailable, and
    // readiness says which backend is missing.
    let down_until = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut refused = 0;
    while tokio::time::Instant::now() < down_until {
        let (status, body) = server.get("/v1/indicators?fiscal_year=2024-2025", Some(READ_ALL)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        refused += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(refused >= 25, "{refused}");
    let (status, ready) = server.get("/health/ready", None).await;
    assert_eq!((status, ready["store"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("down")), "{ready}");
    let failures = metric(&server.client, &server.url, "agora_projector_backend_errors_total").await.unwrap_or(0.0);
    assert!(failures >= 1.0, "the projector should have failed and backed off, not given up");

    let clickhouse = server.services.clickhouse.as_mut().unwrap();
    tokio::task::block_in_place(|| clickhouse.restart());
    server.wait_caught_up().await;
    assert_eq!(all_figures(&server).await, expected);
    let (status, _) = server.get("/health/ready", None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_events_delivered_10000_times_change_no_figure() {
    // A small history touching every read model: delivered once, then 9,999 more times.
    let events = every_kind_of_event();
    let server = TestServer::start_on(Backend::KafkaClickHouse, &[]).await;
    server.ingest(&events).await;
    server.wait_caught_up().await;
    let once = all_figures(&server).await;
    let counted: u64 = once.iter().filter_map(|doc| doc["participation"]["contributions"].as_u64()).sum();
    assert!(counted > 0, "the history should count contributions");

    // The records exactly as the log holds them, produced again with their own keys.
    let log = KafkaLog::open(kafka_settings(&server.services)).await.unwrap();
    let mut records = Vec::new();
    for (partition, end) in log.end_positions().await.unwrap() {
        for record in log.read(partition, 0, end as usize).await.unwrap() {
            let key = partition_key(&decode(&record.payload).unwrap()).as_bytes().to_vec();
            records.push((key, record.payload));
        }
    }
    assert_eq!(records.len(), events.len());
    let copies: Vec<(Vec<u8>, Vec<u8>)> = (0..9_999).flat_map(|_| records.iter().cloned()).collect();
    for chunk in copies.chunks(50_000) {
        log.append(chunk.to_vec()).await.unwrap();
    }
    assert_eq!(total(&log.end_positions().await.unwrap()), 10_000 * events.len() as i64);

    server.wait_caught_up().await;
    assert_eq!(all_figures(&server).await, once);
    assert_eq!(all_figures(&server).await, reference_figures(&events).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_project_and_query_as_separate_processes_give_the_contract_figures() {
    let events = history(0.02, 44);
    let expected = reference_figures(&events).await;
    let services = tokio::task::spawn_blocking(|| Services::start(Backend::KafkaClickHouse)).await.unwrap();
    let env = services.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let client = reqwest::Client::new();

    // Each role in its own process, over its own (unused) data folder: nothing is shared but
    // the broker and the ClickHouse server.
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (ingest_port, query_port) = (free_port(), free_port());
    let _ingest = spawn_agora(&["ingest"], dirs[0].path(), Some(ingest_port), &env);
    let _projector = spawn_agora(&["project"], dirs[1].path(), None, &env);
    let _query = spawn_agora(&["query"], dirs[2].path(), Some(query_port), &env);
    let (ingest_url, query_url) = (format!("http://127.0.0.1:{ingest_port}"), format!("http://127.0.0.1:{query_port}"));
    for url in [&ingest_url, &query_url] {
        let up = wait_until(Duration::from_secs(60), || async {
            client.get(format!("{url}/health/ready")).send().await.is_ok_and(|r| r.status() == StatusCode::OK)
        })
        .await;
        assert!(up, "{url} never became ready");
    }

    for chunk in events.chunks(2_000) {
        let response = client.post(format!("{ingest_url}/v1/events")).bearer_auth(INGEST_TOKEN).json(chunk).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let reply: Value = response.json().await.unwrap();
        assert_eq!(reply["rejected"].as_array().map(Vec::len), Some(0), "{reply}");
    }
    wait_caught_up(&client, &query_url).await;
    assert_eq!(all_figures_at(&client, &query_url).await, expected);
    // The query role alone serves consultations from ClickHouse too.
    let consultation = events.iter().find(|e| e["type"] == "consultation.opened").unwrap()["consultation_id"].as_str().unwrap();
    let response = client.get(format!("{query_url}/v1/consultations/{consultation}")).bearer_auth(READ_ALL).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let view: Value = response.json().await.unwrap();
    assert_eq!(view["consultation_id"], consultation);

    // A TestServer over the embedded store agrees on that consultation too.
    let embedded = TestServer::start_in(tempfile::tempdir().unwrap(), Roles::ALL, &[]).await;
    embedded.ingest(&events).await;
    embedded.wait_caught_up().await;
    let (_, reference) = embedded.get(&format!("/v1/consultations/{consultation}"), Some(READ_ALL)).await;
    assert_eq!(view, reference);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fold_over_its_memory_limit_fails_alone_and_the_pipeline_goes_on() {
    // 1 MiB before spilling, 2 MiB in all: far less than any fold of this history needs.
    let events = history(0.01, 7);
    let server = TestServer::start_on(Backend::KafkaClickHouse, &[("AGORA_CLICKHOUSE_FOLD_MEMORY_MB", "1")]).await;
    server.ingest(&events).await;
    let projected = wait_until(Duration::from_secs(120), || async {
        server.get("/v1/pipeline", Some(READ_ALL)).await.1["projected_lag_events"] == json!(0)
    })
    .await;
    assert!(projected, "the projector should store every event whatever the query role's folds do");

    // The fold fails on its own limit: an error for the reader, not a server out of memory.
    let (status, reply) = server.get("/v1/indicators?fiscal_year=2024-2025", Some(READ_ALL)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{reply}");
    // The store says why, naming the setting (the reply itself keeps internals to the log).
    let store = store_with(&server, &[("AGORA_CLICKHOUSE_FOLD_MEMORY_MB", "1")]).await;
    let error = format!("{:#}", anyhow::Error::from(store.figure_set().await.unwrap_err()));
    assert!(error.contains("AGORA_CLICKHOUSE_FOLD_MEMORY_MB (1 MiB)"), "{error}");
    let (status, pipeline) = server.get("/v1/pipeline", Some(READ_ALL)).await;
    assert_eq!(status, StatusCode::OK, "{pipeline}");
    assert_eq!(pipeline["snapshot"], Value::Null, "no snapshot could be folded: {pipeline}");
    assert!(pipeline["lag_events"].as_u64().unwrap() > 0, "served figures reflect nothing yet: {pipeline}");
    let (status, ready) = server.get("/health/ready", None).await;
    assert_eq!(status, StatusCode::OK, "clickhouse must still be up: {ready}");
    // Ingest and projection go on.
    let more = history(0.01, 8);
    server.ingest(&more).await;
    let projected = wait_until(Duration::from_secs(120), || async {
        server.get("/v1/pipeline", Some(READ_ALL)).await.1["projected_lag_events"] == json!(0)
    })
    .await;
    assert!(projected, "later events should be stored too");

    // Given room to fold, the same store gives the contract figures of everything.
    let (dir, services) = server.stop().await;
    let server = TestServer::launch(dir, Roles::ALL, services, &[("AGORA_CLICKHOUSE_FOLD_MEMORY_MB", "2048")]).await;
    server.wait_caught_up().await;
    let all: Vec<Value> = events.iter().chain(&more).cloned().collect();
    assert_eq!(all_figures(&server).await, reference_figures(&all).await);
}

/// Opens the store `server` uses, with its environment plus `extra`.
async fn store_with(server: &TestServer, extra: &[(&str, &str)]) -> agora_store::Store {
    agora::app::open_backends(&test_config(server.dir.path(), &server.services, extra)).await.unwrap().store
}
