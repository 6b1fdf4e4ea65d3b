//! Crash safety of the embedded pipeline with the real binary: a projector killed with
//! SIGKILL mid-run, or aborted between writing a batch and committing it, restarts and ends
//! with exactly the figures of an uninterrupted run; SIGTERM drains and exits cleanly.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use agora::app::Roles;
use agora::synth::{generate, SynthOptions};
use common::*;
use serde_json::Value;

/// Ingests a synthetic history into a fresh data folder through the ingest role alone, so
/// nothing is projected yet; returns the folder and the number of events in the log.
async fn logged_history(scale: f64) -> (tempfile::TempDir, i64) {
    let server = TestServer::start_in(tempfile::tempdir().unwrap(), Roles::INGEST, &[]).await;
    let events = generate(&SynthOptions { scale, seed: 99, ..SynthOptions::default() });
    server.ingest(&events).await;
    let (dir, _) = server.stop().await;
    let end = log_end(dir.path());
    assert!(end as usize >= events.len());
    (dir, end)
}

fn log_end(dir: &Path) -> i64 {
    let conn = rusqlite::Connection::open(dir.join("events.sqlite")).unwrap();
    conn.query_row("SELECT coalesce(max(seq), 0) FROM events", [], |r| r.get(0)).unwrap()
}

/// Returns the log position the store has committed, 0 before the first batch.
fn store_position(dir: &Path) -> i64 {
    let Ok(conn) = rusqlite::Connection::open_with_flags(dir.join("store.sqlite"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        return 0;
    };
    conn.query_row("SELECT coalesce(sum(next_offset), 0) FROM log_positions", [], |r| r.get(0)).unwrap_or(0)
}

fn copy_log(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    std::fs::copy(from.join("events.sqlite"), to.path().join("events.sqlite")).unwrap();
    to
}

fn agora(args: &[&str], dir: &Path, extra: &[(&str, &str)]) -> AgoraProcess {
    spawn_agora(args, dir, None, extra)
}

async fn wait_for_position(dir: &Path, reached: impl Fn(i64) -> bool) -> bool {
    wait_until(Duration::from_secs(120), || async { reached(store_position(dir)) }).await
}

/// Every indicator document of the history, read by a query role over `dir`.
async fn figures_in(dir: tempfile::TempDir) -> Vec<Value> {
    all_figures(&TestServer::start_in(dir, Roles::QUERY, &[]).await).await
}

/// Projects a copy of the log in one uninterrupted run and returns its figures.
async fn reference_figures(log_dir: &Path, end: i64) -> Vec<Value> {
    let dir = copy_log(log_dir);
    let mut projector = agora(&["project"], dir.path(), &[]);
    assert!(wait_for_position(dir.path(), |p| p == end).await, "reference projector did not finish");
    projector.kill().unwrap();
    projector.wait().unwrap();
    figures_in(dir).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projector_killed_mid_run_restarts_to_identical_figures() {
    let (dir, end) = logged_history(0.05).await;
    let expected = reference_figures(dir.path(), end).await;

    let mut projector = agora(&["project"], dir.path(), &[("AGORA_PROJECTOR_BATCH_SIZE", "100")]);
    assert!(wait_for_position(dir.path(), |p| p > 0).await, "projector never committed a batch");
    projector.kill().unwrap(); // SIGKILL
    projector.wait().unwrap();
    let at_kill = store_position(dir.path());
    assert!(at_kill < end, "the kill should land before the end of the log ({at_kill} of {end})");

    let mut restarted = agora(&["project"], dir.path(), &[("AGORA_PROJECTOR_BATCH_SIZE", "100")]);
    assert!(wait_for_position(dir.path(), |p| p == end).await, "restarted projector did not finish");
    restarted.kill().unwrap();
    restarted.wait().unwrap();
    assert_eq!(figures_in(dir).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projector_aborted_between_write_and_commit_loses_and_doubles_nothing() {
    let (dir, end) = logged_history(0.02).await;
    let expected = reference_figures(dir.path(), end).await;

    // The first batch is written into the store's transaction, then the process aborts.
    let mut crashing = agora(&["project"], dir.path(), &[("AGORA_FAILPOINT", "store.before_commit")]);
    let status = crashing.wait().unwrap();
    assert!(!status.success(), "the failpoint should abort the projector");
    assert_eq!(store_position(dir.path()), 0, "nothing of the aborted batch may be committed");

    let mut restarted = agora(&["project"], dir.path(), &[]);
    assert!(wait_for_position(dir.path(), |p| p == end).await);
    restarted.kill().unwrap();
    restarted.wait().unwrap();
    assert_eq!(figures_in(dir).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut serve = agora(&["serve"], dir.path(), &[]);
    // The store file appears once the process has opened its backends.
    assert!(wait_until(Duration::from_secs(30), || async { dir.path().join("store.sqlite").exists() }).await);
    let pid = serve.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let exited = wait_until(Duration::from_secs(20), || {
        let done = serve.try_wait().unwrap();
        async move { done.is_some() }
    })
    .await;
    assert!(exited, "agora serve did not stop within 20 s of SIGTERM");
    assert!(serve.wait().unwrap().success());
}

#[test]
fn ingest_refuses_to_start_without_a_pseudonym_key() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_agora"))
        .args(["ingest", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("AGORA_PSEUDONYM_KEY")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("AGORA_PSEUDONYM_KEY"), "{stderr}");
}
