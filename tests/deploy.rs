//! The operations files in `deploy/` against the real service: the Grafana dashboard is valid
//! JSON whose every query names a metric the roles really serve, and so does every Prometheus
//! alert rule. Renaming a metric without updating them fails here.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::{json, Value};

/// Returns every `agora_*` metric family a string names, histogram suffixes removed.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(found) = text[i..].find("agora_") {
        let start = i + found;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &text[start..end];
        let family = ["_bucket", "_count", "_sum"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        names.insert(family.to_owned());
        i = end;
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_name_only_metrics_the_roles_serve() {
    let server = TestServer::start().await;
    // Touch every labelled series: an accepted and a rejected event, a refused request, reads.
    let (status, _) = server
        .post_events(&json!([opened(1, "2024-05-01T10:00:00Z", "MSSS", "c1", "platform", &["online_survey"]), {"event_id": "bad"}]))
        .await;
    assert_eq!(status, 202);
    let refused = server.client.post(format!("{}/v1/events", server.url)).json(&json!([])).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    server.wait_caught_up().await;
    server.indicators("2024-2025", None).await;
    server.indicators("2024-2025", None).await;
    let text = server.client.get(format!("{}/metrics", server.url)).send().await.unwrap().text().await.unwrap();
    let served: BTreeSet<String> =
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect();

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let dashboard_text = std::fs::read_to_string(root.join("grafana/agora-operations.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&dashboard_text).expect("the Grafana dashboard is JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(exprs.len() >= 10, "{} queries", exprs.len());
    let in_dashboard = metric_names(&exprs.join("\n"));
    let in_alerts = metric_names(&std::fs::read_to_string(root.join("prometheus/agora-alerts.yml")).unwrap());
    for (file, names) in [("grafana/agora-operations.json", &in_dashboard), ("prometheus/agora-alerts.yml", &in_alerts)] {
        let unknown: Vec<_> = names.difference(&served).collect();
        assert!(unknown.is_empty(), "{file} names metrics no role serves: {unknown:?} (served: {served:?})");
    }
    // The alerts cover what operations asked for.
    for needed in ["agora_projector_lag_events", "agora_projector_dead_letters_total", "agora_ingest_events_rejected_total"] {
        assert!(in_alerts.contains(needed), "no alert on {needed}");
    }
    assert!(in_alerts.contains("agora_ingest_request_duration_seconds") && in_alerts.contains("agora_query_request_duration_seconds"));
}
