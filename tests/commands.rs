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
