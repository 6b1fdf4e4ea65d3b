//! The commands that are not roles, run as the real binary: `generate` writes the synthetic
//! history, `import` posts it in batches and reports rejected lines, `demo` serves a loaded
//! history with public read and a working ingest token.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_then_import_posts_every_line_and_reports_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("history.ndjson");
    let status = Command::new(env!("CARGO_BIN_EXE_agora"))
        .args(["generate", "--scale", "0.01", "--seed", "5", "--output"])
        .arg(&file)
        .status()
        .unwrap();
    assert!(status.success());
    let mut text = std::fs::read_to_string(&file).unwrap();
    let good_lines = text.lines().count();
    assert!(good_lines > 1_000, "{good_lines} lines");
    // Two bad lines at known places: line good_lines + 1 and good_lines + 3.
    text.push_str("{\"event_id\": \"bad\"}\n\n[1, 2]\n");
    std::fs::write(&file, text).unwrap();

    let server = TestServer::start().await;
    let url = server.url.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_agora"))
            .args(["import", file.to_str().unwrap(), "--url", &url, "--batch-size", "700"])
            .env("AGORA_IMPORT_TOKEN", INGEST_TOKEN)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains(&format!("accepted {good_lines} events, rejected 2")), "{stdout}");
    assert!(stdout.contains(&format!("line {}: /event_id", good_lines + 1)), "{stdout}");
    assert!(stdout.contains(&format!("line {}: event: must be a JSON object", good_lines + 3)), "{stdout}");
    server.wait_caught_up().await;
    let (_, pipeline) = server.get("/v1/pipeline", Some(READ_ALL)).await;
    assert_eq!(pipeline["log"]["end_offsets"]["0"], json!(good_lines));
    assert!(server.indicators("2024-2025", None).await["consultations"]["opened"].as_u64().unwrap() > 0);

    // A wrong token is refused, not retried.
    let file = dir.path().join("history.ndjson");
    let url = server.url.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_agora"))
            .args(["import", file.to_str().unwrap(), "--url", &url, "--token", "wrong"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("401"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_a_loaded_history_with_public_read() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let mut demo = Command::new(env!("CARGO_BIN_EXE_agora"))
        .args(["demo", "--scale", "0.02", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(&data)
        .env("AGORA_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = demo.stdout.take().unwrap();
    let (url, token) = tokio::task::spawn_blocking(move || {
        let (mut url, mut token) = (None, None);
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(rest) = line.trim().strip_prefix("dashboard:") {
                url = Some(rest.trim().trim_end_matches('/').to_owned());
            }
            if let Some(rest) = line.trim().strip_prefix("ingest token:") {
                token = Some(rest.trim().to_owned());
            }
            if line.starts_with("Press Ctrl-C") {
                break;
            }
        }
        (url.expect("dashboard URL printed"), token.expect("ingest token printed"))
    })
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let indicators: serde_json::Value =
        client.get(format!("{url}/v1/indicators?fiscal_year=2025-2026")).send().await.unwrap().json().await.unwrap();
    assert!(indicators["consultations"]["opened"].as_u64().unwrap() > 50, "{indicators}");
    assert!(indicators["participation"]["contributions"].as_u64().unwrap() > 0);
    // Some public bodies meet the growth target and others miss it.
    let mut met = std::collections::HashSet::new();
    for org in ["MSSS", "MEQ", "MES", "MTMD", "MELCCFP", "MAPAQ", "MCC", "MEIE", "MFQ", "MCE"] {
        let doc: serde_json::Value = client
            .get(format!("{url}/v1/indicators?fiscal_year=2025-2026&organization_id={org}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        met.insert(doc["targets"][0]["met"].clone());
    }
    assert!(met.contains(&json!(true)) && met.contains(&json!(false)), "{met:?}");
    let response = client
        .post(format!("{url}/v1/events"))
        .bearer_auth(&token)
        .json(&opened(1, "2025-05-01T10:00:00Z", "MSSS", "demo-extra", "platform", &["online_vote"]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    demo.kill().unwrap();
    demo.wait().unwrap();
}

/// `agora migrate` on a store: creates the tables once, is a no-op the second time, and
/// names the store and schema version it left.
fn migrates_twice(services: &Services, dir: &std::path::Path, backend: &str) {
    for _ in 0..2 {
        let output = Command::new(env!("CARGO_BIN_EXE_agora"))
            .args(["migrate", "--data-dir"])
            .arg(dir)
            .envs(services.env())
            .env("AGORA_LOG", "warn")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
        assert!(stdout.starts_with(&format!("{backend} store at schema version ")), "{stdout}");
    }
}

#[test]
fn migrate_creates_the_store_once_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    migrates_twice(&Services::default(), dir.path(), "sqlite");
    assert!(dir.path().join("store.sqlite").exists());

    let clickhouse = Services { broker: None, clickhouse: Some(ClickHouse::start()) };
    migrates_twice(&clickhouse, dir.path(), "clickhouse");
    let tables = clickhouse.clickhouse.as_ref().unwrap().sql("SELECT name FROM system.tables WHERE database = 'agora_test' ORDER BY name");
    for table in ["batches", "consultation_openings", "contributions", "generations", "schema_migrations", "visits"] {
        assert!(tables.lines().any(|t| t == table), "{table} missing from {tables}");
    }
    let versions = clickhouse.clickhouse.as_ref().unwrap().sql("SELECT count() FROM agora_test.schema_migrations");
    assert_eq!(versions.trim(), "1", "each migration is recorded once");

    // A server that is not there gets a clear error, not a hang.
    let output = Command::new(env!("CARGO_BIN_EXE_agora"))
        .arg("migrate")
        .env("AGORA_CLICKHOUSE_URL", format!("http://127.0.0.1:{}", free_port()))
        .env("AGORA_LOG", "warn")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("failed to open the clickhouse store") && stderr.contains("unreachable"), "{stderr}");
}
