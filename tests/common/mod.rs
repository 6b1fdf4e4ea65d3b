//! Shared helpers of the end-to-end suite: an Agora app on port 0 over a fresh data folder,
//! an HTTP client for it, and builders of contract events.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use agora::app::{open_backends, run, Roles};
use agora::config::Config;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const INGEST_TOKEN: &str = "ingest-secret";
pub const READ_ALL: &str = "read-all-secret";
pub const READ_MSSS: &str = "read-msss-secret";
pub const PSEUDONYM_KEY: &str = "test-pseudonym-key";

/// The environment every test server gets, on top of its own.
pub fn test_env(extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut vars: HashMap<String, String> = [
        ("AGORA_INGEST_TOKENS", format!("platform:{INGEST_TOKEN}")),
        ("AGORA_READ_TOKENS", format!("*:{READ_ALL},MSSS:{READ_MSSS}")),
        ("AGORA_PSEUDONYM_KEY", PSEUDONYM_KEY.to_string()),
        ("AGORA_PROJECTOR_POLL_MS", "20".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in extra {
        vars.insert(k.to_string(), v.to_string());
    }
    vars
}

/// An Agora process (all roles) running in this test, on port 0.
pub struct TestServer {
    pub url: String,
    pub dir: TempDir,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub client: reqwest::Client,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    pub async fn start_with(extra: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, Roles::ALL, extra).await
    }

    pub async fn start_in(dir: TempDir, roles: Roles, extra: &[(&str, &str)]) -> Self {
        let vars = test_env(extra);
        let config = Config::load(Some("127.0.0.1:0".parse().unwrap()), Some(dir.path().to_path_buf()), |name| vars.get(name).cloned()).unwrap();
        let backends = open_backends(&config).unwrap();
        let listener = TcpListener::bind(config.listen).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(run(config, roles, backends, listener, shutdown.clone()));
        TestServer { url, dir, shutdown, handle: Some(handle), client: reqwest::Client::new() }
    }

    /// Stops the server, waiting for its drain, and returns its data folder.
    pub async fn stop(mut self) -> TempDir {
        self.shutdown.cancel();
        self.handle.take().unwrap().await.unwrap().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    pub async fn post_events(&self, body: &Value) -> (StatusCode, Value) {
        let response = self.client.post(format!("{}/v1/events", self.url)).bearer_auth(INGEST_TOKEN).json(body).send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Posts events that must all be accepted.
    pub async fn ingest(&self, events: &[Value]) {
        for chunk in events.chunks(5_000) {
            let (status, reply) = self.post_events(&Value::Array(chunk.to_vec())).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
            assert_eq!(reply["rejected"], json!([]), "{reply}");
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let mut request = self.client.get(format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Waits until the projector reflects every accepted event.
    pub async fn wait_caught_up(&self) {
        wait_caught_up(&self.client, &self.url).await
    }

    pub async fn indicators(&self, fiscal_year: &str, organization_id: Option<&str>) -> Value {
        let mut path = format!("/v1/indicators?fiscal_year={fiscal_year}");
        if let Some(org) = organization_id {
            path.push_str(&format!("&organization_id={org}"));
        }
        let (status, body) = self.get(&path, Some(READ_ALL)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Polls `/v1/pipeline` of the query role at `url` until `lag_events` is 0.
pub async fn wait_caught_up(client: &reqwest::Client, url: &str) {
    let caught_up = wait_until(Duration::from_secs(60), || async {
        let Ok(response) = client.get(format!("{url}/v1/pipeline")).bearer_auth(READ_ALL).send().await else { return false };
        let body: Value = response.json().await.unwrap_or(Value::Null);
        body["lag_events"] == json!(0)
    })
    .await;
    assert!(caught_up, "projector did not catch up within 60 s");
}

/// Waits at most `timeout` for `condition`, checking it every 20 ms.
pub async fn wait_until<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Returns the canonical UUID numbered `n`, so tests can control `event_id` order.
pub fn uuid(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

/// Returns an event with the given envelope and data.
pub fn event(n: u64, kind: &str, at: &str, org: &str, consultation: Option<&str>, participant: Option<&str>, data: Value) -> Value {
    let mut e = json!({
        "event_id": uuid(n), "type": kind, "schema_version": 1, "occurred_at": at,
        "organization_id": org, "data": data
    });
    if let Some(c) = consultation {
        e["consultation_id"] = json!(c);
    }
    if let Some(p) = participant {
        e["participant_id"] = json!(p);
    }
    e
}

pub fn opened(n: u64, at: &str, org: &str, consultation: &str, hosted_on: &str, methods: &[&str]) -> Value {
    event(n, "consultation.opened", at, org, Some(consultation), None, json!({"title_fr": "Titre", "hosted_on": hosted_on, "methods": methods}))
}

pub fn contribution(n: u64, at: &str, org: &str, consultation: &str, participant: &str, contribution_id: &str, kind: &str) -> Value {
    event(n, "contribution.submitted", at, org, Some(consultation), Some(participant), json!({"contribution_id": contribution_id, "kind": kind}))
}

pub fn visit(n: u64, at: &str, org: &str, consultation: &str, participant: &str) -> Value {
    event(n, "participant.visited", at, org, Some(consultation), Some(participant), json!({"channel": "web"}))
}

pub fn feedback(n: u64, at: &str, org: &str, consultation: Option<&str>, participant: &str, satisfaction: u8, suggestion: Option<&str>) -> Value {
    let mut data = json!({"satisfaction": satisfaction});
    if let Some(s) = suggestion {
        data["suggestion"] = json!(s);
    }
    event(n, "feedback.submitted", at, org, consultation, Some(participant), data)
}

/// Returns every byte of every file under `dir`.
pub fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            bytes.extend(all_bytes(&path));
        } else {
            bytes.extend(std::fs::read(&path).unwrap());
        }
    }
    bytes
}
