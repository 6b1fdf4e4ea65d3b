//! `agora replay` on every log backend: the read models are rebuilt from the beginning of
//! the log, a row planted straight into the store disappears, and replaying twice counts
//! nothing twice.

mod common;

use std::process::Command;
use std::time::Duration;

use agora::synth::{generate, SynthOptions};
use common::*;
use serde_json::Value;

fn replay(dir: &std::path::Path, services_env: &[(String, String)]) -> String {
    let mut env = test_env(&[]);
    env.extend(services_env.iter().cloned());
    let output = Command::new(env!("CARGO_BIN_EXE_agora"))
        .arg("replay")
        .arg("--data-dir")
        .arg(dir)
        .envs(env)
        .env("AGORA_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "replay failed: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

async fn rebuilds_from_the_log_without_double_counting(backend: Backend) {
    let events: Vec<Value> = generate(&SynthOptions { scale: 0.01, seed: 31, ..SynthOptions::default() });
    let server = TestServer::start_on(backend, &[]).await;
    server.ingest(&events).await;
    server.wait_caught_up().await;
    let expected = all_figures(&server).await;
    let clean = server.indicators("2024-2025", Some("MSSS")).await;

    // A wrong row written straight into the store changes a served figure (on ClickHouse,
    // once the query role's snapshot has been refreshed past it)...
    plant_wrong_contribution(&server);
    let shows = wait_until(Duration::from_secs(30), || async { all_figures(&server).await != expected }).await;
    assert!(shows, "the planted row should show");

    let planted = all_figures(&server).await;

    // ...and a replay, run twice, gives back exactly the figures of the log. While it runs,
    // readers see the old figures or the new ones, never a partial rebuild.
    for _ in 0..2 {
        let before = server.indicators("2024-2025", Some("MSSS")).await;
        let running = tokio::task::spawn_blocking({
            let env = server.services.env();
            let dir = server.dir.path().to_path_buf();
            move || replay(&dir, &env)
        });
        let mut seen = 0;
        while !running.is_finished() {
            let now = server.indicators("2024-2025", Some("MSSS")).await;
            assert!(now == before || now == clean, "a partial rebuild was served: {now}");
            seen += 1;
        }
        let printed = running.await.unwrap();
        assert!(printed.contains(&format!("from {} records", events.len())), "{printed}");
        assert!(seen > 0);
        wait_until(Duration::from_secs(30), || async { all_figures(&server).await == expected }).await;
        assert_eq!(all_figures(&server).await, expected);
    }
    assert_ne!(planted, expected);
}

on_every_backend!(rebuilds_from_the_log_without_double_counting);
