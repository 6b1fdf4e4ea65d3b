//! `agora audit` on every backend: recomputing every figure from the raw log with polars
//! finds no difference after a clean run (duplicates, late and out-of-order events
//! included), and finds the difference a wrong row written straight into the store makes,
//! with exit code 1.

mod common;

use std::process::{Command, Output};

use common::*;

fn audit(server: &TestServer) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agora"))
        .args(["audit", "--data-dir"])
        .arg(server.dir.path())
        .envs(test_env(&[]))
        .envs(server.services.env())
        .env("AGORA_LOG", "warn")
        .output()
        .unwrap()
}

async fn audit_finds_nothing_on_a_clean_run_and_the_planted_row_after(backend: Backend) {
    let server = TestServer::start_on(backend, &[]).await;
    let events = history(0.01, 61);
    // Delivered twice over: the log holds duplicates the audit must count once.
    server.ingest(&events).await;
    server.ingest(&events[..events.len() / 3]).await;
    server.wait_caught_up().await;

    let clean = audit(&server);
    let stdout = String::from_utf8_lossy(&clean.stdout);
    assert!(clean.status.success(), "{stdout}{}", String::from_utf8_lossy(&clean.stderr));
    assert!(stdout.contains(": 0 differences"), "{stdout}");
    let logged = events.len() + events.len() / 3;
    assert!(stdout.contains(&format!("audited {logged} records (0 undecodable)")), "{stdout}");

    plant_wrong_contribution(&server);
    let planted = audit(&server);
    let stdout = String::from_utf8_lossy(&planted.stdout);
    assert_eq!(planted.status.code(), Some(1), "{stdout}{}", String::from_utf8_lossy(&planted.stderr));
    // The planted comment shows in MSSS's and the government's contributions of its year.
    let lines: Vec<&str> = stdout.lines().filter(|l| l.contains(": participation.contributions recomputed ")).collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines.iter().any(|l| l.contains(" MSSS: ")) && lines.iter().any(|l| l.contains(" government: ")), "{stdout}");
    let line = lines[0];
    let recomputed: u64 = line.split("recomputed ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    let served: u64 = line.split("served ").nth(1).unwrap().trim().parse().unwrap();
    assert_eq!(served, recomputed + 1, "{line}");
    assert!(stdout.contains(": participation.contributions_by_kind.comment recomputed "), "{stdout}");
}

on_every_backend!(audit_finds_nothing_on_a_clean_run_and_the_planted_row_after);
