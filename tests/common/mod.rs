//! Shared helpers of the end-to-end suite: an Agora app on port 0 over a fresh data folder,
//! an HTTP client for it, and builders of contract events.
#![allow(dead_code)]

pub mod services;

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

#[allow(unused_imports)]
pub use services::{free_port, Backend, Broker, ClickHouse, Services};

/// Generates one `#[tokio::test]` per backend for each named `async fn(Backend)`, in modules
/// `embedded`, `kafka` and `kafka_clickhouse`: the contract suite runs on every backend.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod embedded { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::common::Backend::Embedded).await } )* }
        mod kafka { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::common::Backend::Kafka).await } )* }
        mod kafka_clickhouse { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::common::Backend::KafkaClickHouse).await } )* }
    };
}

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

/// The configuration of a test server over `dir` and `services`, with the test environment
/// plus `extra`, listening on port 0.
pub fn test_config(dir: &Path, services: &Services, extra: &[(&str, &str)]) -> Config {
    let service_env = services.env();
    let mut all: Vec<(&str, &str)> = service_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.extend_from_slice(extra);
    let vars = test_env(&all);
    Config::load(Some("127.0.0.1:0".parse().unwrap()), Some(dir.to_path_buf()), |name| vars.get(name).cloned()).unwrap()
}

/// An Agora process (all roles) running in this test, on port 0.
pub struct TestServer {
    pub url: String,
    pub dir: TempDir,
    pub services: Services,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub client: reqwest::Client,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    pub async fn start_with(extra: &[(&str, &str)]) -> Self {
        Self::start_on(Backend::Embedded, extra).await
    }

    /// Starts every role on `backend`, with private services started for it.
    pub async fn start_on(backend: Backend, extra: &[(&str, &str)]) -> Self {
        let services = tokio::task::spawn_blocking(move || Services::start(backend)).await.unwrap();
        Self::launch(tempfile::tempdir().unwrap(), Roles::ALL, services, extra).await
    }

    pub async fn start_in(dir: TempDir, roles: Roles, extra: &[(&str, &str)]) -> Self {
        Self::launch(dir, roles, Services::default(), extra).await
    }

    /// Starts `roles` over `dir` and `services`.
    pub async fn launch(dir: TempDir, roles: Roles, services: Services, extra: &[(&str, &str)]) -> Self {
        let config = test_config(dir.path(), &services, extra);
        let backends = open_backends(&config).await.unwrap();
        let listener = TcpListener::bind(config.listen).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(run(config, roles, backends, listener, shutdown.clone()));
        TestServer { url, dir, services, shutdown, handle: Some(handle), client: reqwest::Client::new() }
    }

    /// Stops the server, waiting for its drain, and returns its data folder and services.
    pub async fn stop(mut self) -> (TempDir, Services) {
        self.shutdown.cancel();
        self.handle.take().unwrap().await.unwrap().unwrap();
        let dir = tempfile::tempdir().unwrap();
        (std::mem::replace(&mut self.dir, dir), std::mem::take(&mut self.services))
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

/// Fiscal years of the synthetic history.
pub const FISCAL_YEARS: &[&str] = &["2021-2022", "2022-2023", "2023-2024", "2024-2025", "2025-2026", "2026-2027"];

/// Every indicator document of the synthetic history, for all of government and three
/// bodies: what crash and backend tests compare.
pub async fn all_figures(server: &TestServer) -> Vec<Value> {
    all_figures_at(&server.client, &server.url).await
}

/// [`all_figures`] from the query role at `url`.
pub async fn all_figures_at(client: &reqwest::Client, url: &str) -> Vec<Value> {
    let mut documents = Vec::new();
    for fy in FISCAL_YEARS {
        for org in [None, Some("MSSS"), Some("MCC"), Some("SCT")] {
            let mut path = format!("{url}/v1/indicators?fiscal_year={fy}");
            if let Some(org) = org {
                path.push_str(&format!("&organization_id={org}"));
            }
            let response = client.get(path).bearer_auth(READ_ALL).send().await.unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert_eq!(status, StatusCode::OK, "{body}");
            documents.push(body);
        }
    }
    documents
}

/// The folding scenario of tests/folding.rs, whose figures are computed by hand there: in
/// the order the platform delivers it.
pub fn folding_scenario() -> Vec<Value> {
    let triage = |n, at, feedback_n, status| {
        event(n, "suggestion.triaged", at, "SCT", None, None, json!({"feedback_event_id": uuid(feedback_n), "status": status}))
    };
    let update = |n, at, consultation, data| event(n, "consultation.updated", at, "MSSS", Some(consultation), None, data);
    let bare = |n, kind, at, org, consultation| event(n, kind, at, org, Some(consultation), None, json!({}));
    vec![
        // Previous fiscal year: one consultation on the platform.
        opened(100, "2020-06-01T12:00:00Z", "MSSS", "c0", "platform", &["online_survey"]),
        // c1: opened twice (exact duplicate delivery), then a later second opening that is ignored.
        opened(1, "2021-05-01T10:00:00Z", "MSSS", "c1", "platform", &["online_survey"]),
        opened(1, "2021-05-01T10:00:00Z", "MSSS", "c1", "platform", &["online_survey"]),
        opened(40, "2021-08-01T10:00:00Z", "MEQ", "c1", "third_party", &["phone"]),
        // c1 updates delivered out of order: the July one occurred last and wins.
        update(21, "2021-07-01T10:00:00Z", "c1", json!({"hosted_on": "platform"})),
        update(20, "2021-06-01T10:00:00Z", "c1", json!({"hosted_on": "third_party", "title_fr": "Nouveau titre"})),
        // c2: two updates at the same instant; the higher event_id (31) is the latest.
        opened(3, "2021-05-02T10:00:00Z", "MSSS", "c2", "third_party", &["online_vote"]),
        update(31, "2021-06-01T10:00:00-04:00", "c2", json!({"methods": ["phone"]})),
        update(30, "2021-06-01T14:00:00Z", "c2", json!({"methods": ["online_vote"]})),
        // Contributions: k2 withdrawn before it is submitted; k1 submitted twice (client error).
        event(
            50,
            "contribution.withdrawn",
            "2021-06-03T10:00:00Z",
            "MSSS",
            Some("c1"),
            None,
            json!({"contribution_id": "k2", "reason": "moderation"}),
        ),
        contribution(51, "2021-06-02T10:00:00Z", "MSSS", "c1", "p1", "k1", "comment"),
        contribution(52, "2021-06-02T10:00:00Z", "MSSS", "c1", "p2", "k2", "vote"),
        contribution(53, "2021-06-02T11:00:00Z", "MSSS", "c1", "p1", "k1", "comment"),
        contribution(54, "2021-06-02T10:00:00Z", "MSSS", "c2", "p1", "k3", "proposal"),
        visit(60, "2021-06-02T09:00:00Z", "MSSS", "c1", "p1"),
        visit(61, "2021-06-02T09:00:00Z", "MSSS", "c1", "p2"),
        visit(62, "2021-06-02T09:00:00Z", "MSSS", "c2", "p5"),
        visit(63, "2021-06-02T09:30:00Z", "MSSS", "c2", "p5"),
        // c3: participation arrives before the opening.
        visit(70, "2021-09-02T09:00:00Z", "MEQ", "c3", "p3"),
        contribution(71, "2021-09-02T10:00:00Z", "MEQ", "c3", "p3", "k4", "survey_response"),
        opened(72, "2021-09-01T10:00:00Z", "MEQ", "c3", "platform", &["in_person_meeting", "online_brief"]),
        // c4: cancelled after it was closed, with participation and feedback.
        opened(80, "2021-05-01T10:00:00Z", "MSSS", "c4", "platform", &["online_comments"]),
        contribution(81, "2021-05-02T10:00:00Z", "MSSS", "c4", "p4", "k5", "brief"),
        visit(82, "2021-05-02T09:00:00Z", "MSSS", "c4", "p4"),
        bare(83, "consultation.closed", "2021-06-01T10:00:00Z", "MSSS", "c4"),
        event(84, "consultation.cancelled", "2021-06-02T10:00:00Z", "MSSS", Some("c4"), None, json!({"reason": "doublon"})),
        // Closings (the earliest counts) and results.
        bare(90, "consultation.closed", "2021-10-05T00:00:00Z", "MSSS", "c1"),
        bare(91, "consultation.closed", "2021-10-01T00:00:00Z", "MSSS", "c1"),
        bare(92, "consultation.results_published", "2021-10-11T12:00:00Z", "MSSS", "c1"),
        bare(93, "consultation.closed", "2021-11-01T00:00:00Z", "MSSS", "c2"),
        bare(94, "consultation.closed", "2021-11-01T00:00:00Z", "MEQ", "c3"),
        bare(95, "consultation.results_published", "2021-11-02T00:00:00Z", "MEQ", "c3"),
        // Feedback: p1's platform feedback twice (the later counts), a blank suggestion,
        // feedback on a consultation never opened and on a cancelled one.
        feedback(111, "2021-07-01T10:00:00Z", "MSSS", None, "p1", 5, Some("Des rappels par courriel")),
        feedback(110, "2021-06-01T10:00:00Z", "MSSS", None, "p1", 2, Some("ancienne idée")),
        feedback(112, "2021-07-01T10:00:00Z", "MSSS", Some("c1"), "p1", 4, Some("   ")),
        feedback(113, "2021-07-01T10:00:00Z", "MEQ", Some("ghost"), "p2", 3, Some("idée")),
        feedback(114, "2021-07-01T10:00:00Z", "MSSS", Some("c4"), "p4", 1, None),
        // Triage: delivered latest first; triage of the superseded feedback changes nothing.
        triage(121, "2021-09-01T10:00:00Z", 111, "implemented"),
        triage(120, "2021-08-01T10:00:00Z", 111, "under_review"),
        triage(122, "2021-08-01T10:00:00Z", 110, "declined"),
    ]
}

/// The synthetic history at `scale` with `seed`.
pub fn history(scale: f64, seed: u64) -> Vec<Value> {
    agora::synth::generate(&agora::synth::SynthOptions { scale, seed, ..agora::synth::SynthOptions::default() })
}

/// The figures an uninterrupted embedded run gives for `events`.
pub async fn reference_figures(events: &[Value]) -> Vec<Value> {
    let server = TestServer::start().await;
    server.ingest(events).await;
    server.wait_caught_up().await;
    all_figures(&server).await
}

/// Starts the real `agora` binary with `args` over `dir`, with the test environment plus
/// `extra`, listening on `listen` (port 0 when `None`). Its log level is `warn`, or
/// `AGORA_TEST_CHILD_LOG` when set (`info` shows joins, rebalances and batches).
pub fn spawn_agora(args: &[&str], dir: &Path, listen: Option<u16>, extra: &[(&str, &str)]) -> AgoraProcess {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_agora"));
    let listen = format!("127.0.0.1:{}", listen.unwrap_or(0));
    command.args(args).arg("--data-dir").arg(dir).arg("--listen").arg(listen);
    command
        .envs(test_env(extra))
        .env("AGORA_LOG", std::env::var("AGORA_TEST_CHILD_LOG").unwrap_or_else(|_| "warn".into()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit());
    AgoraProcess(command.spawn().unwrap())
}

/// A child `agora` process, killed when dropped so a failing test leaves none behind.
pub struct AgoraProcess(pub std::process::Child);

impl std::ops::Deref for AgoraProcess {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for AgoraProcess {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for AgoraProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Polls `/v1/pipeline` of the query role at `url` until `lag_events` is 0.
pub async fn wait_caught_up(client: &reqwest::Client, url: &str) {
    let caught_up = wait_until(Duration::from_secs(60), || async {
        let Ok(response) = client.get(format!("{url}/v1/pipeline")).bearer_auth(READ_ALL).send().await else {
            return false;
        };
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
    event(
        n,
        "consultation.opened",
        at,
        org,
        Some(consultation),
        None,
        json!({"title_fr": "Titre", "hosted_on": hosted_on, "methods": methods}),
    )
}

pub fn contribution(n: u64, at: &str, org: &str, consultation: &str, participant: &str, contribution_id: &str, kind: &str) -> Value {
    event(
        n,
        "contribution.submitted",
        at,
        org,
        Some(consultation),
        Some(participant),
        json!({"contribution_id": contribution_id, "kind": kind}),
    )
}

pub fn visit(n: u64, at: &str, org: &str, consultation: &str, participant: &str) -> Value {
    event(n, "participant.visited", at, org, Some(consultation), Some(participant), json!({"channel": "web"}))
}

pub fn feedback(
    n: u64,
    at: &str,
    org: &str,
    consultation: Option<&str>,
    participant: &str,
    satisfaction: u8,
    suggestion: Option<&str>,
) -> Value {
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

/// Returns the Kafka settings a test server gets from `services`, for tests that talk to the
/// broker themselves (positions, dead letters, raw records).
pub fn kafka_settings(services: &Services) -> agora_eventlog::KafkaSettings {
    let env: HashMap<String, String> = services.env().into_iter().collect();
    let config = Config::load(None, None, |name| env.get(name).cloned()).unwrap();
    match config.log_backend {
        agora::config::LogBackend::Kafka(settings) => settings,
        agora::config::LogBackend::Embedded => panic!("these services have no broker"),
    }
}

/// Writes a wrong contribution (to a counted MSSS consultation) straight into the server's
/// store, behind the projector's back, and bumps the store's version so caches see it: what
/// replay and audit tests must undo or find.
pub fn plant_wrong_contribution(server: &TestServer) {
    match &server.services.clickhouse {
        Some(clickhouse) => {
            clickhouse.sql(
                "INSERT INTO agora_test.contributions
                 SELECT generation, 'planted', consultation_id, 'planted-participant', 'comment', at_ms, 'planted'
                 FROM agora_test.consultation_openings
                 WHERE organization_id = 'MSSS'
                   AND generation = (SELECT max(generation) FROM agora_test.generations WHERE state = 2)
                   AND consultation_id NOT IN (SELECT consultation_id FROM agora_test.consultation_marks WHERE mark = 'cancelled')
                 LIMIT 1",
            );
            clickhouse.sql(
                "INSERT INTO agora_test.batches (generation, rows)
                 SELECT max(generation), 0 FROM agora_test.generations WHERE state = 2",
            );
        }
        None => {
            let store = rusqlite::Connection::open(server.dir.path().join("store.sqlite")).unwrap();
            store
                .execute_batch(
                    "INSERT INTO contributions (contribution_id, consultation_id, participant, kind, at_ms, event_id)
                     SELECT 'planted', consultation_id, 'planted-participant', 'comment', opened_at_ms, 'planted'
                     FROM consultations WHERE organization_id = 'MSSS' AND cancelled = 0 LIMIT 1;
                     UPDATE store_version SET version = version + 1;",
                )
                .unwrap();
        }
    }
}

/// Sums positions over partitions.
pub fn total(positions: &agora_eventlog::Positions) -> i64 {
    positions.values().sum()
}

/// Reads one gauge or counter without labels from a `/metrics` page.
pub async fn metric(client: &reqwest::Client, url: &str, name: &str) -> Option<f64> {
    let text = client.get(format!("{url}/metrics")).send().await.ok()?.text().await.ok()?;
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
