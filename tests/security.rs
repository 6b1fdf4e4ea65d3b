//! Read scopes, public read, and personal data: an organization's token gets 403 on another
//! organization's figures; no participant identifier is written in clear anywhere in the
//! data folder; operations routes need no token.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::json;

async fn loaded(backend: Backend) -> TestServer {
    let server = TestServer::start_on(backend, &[]).await;
    server
        .ingest(&[
            opened(1, "2021-05-01T10:00:00Z", "MSSS", "c-msss", "platform", &["online_survey"]),
            opened(2, "2021-05-01T10:00:00Z", "MEQ", "c-meq", "platform", &["online_survey"]),
            contribution(3, "2021-05-02T10:00:00Z", "MSSS", "c-msss", "marie.tremblay@example.org", "k1", "comment"),
            visit(4, "2021-05-02T10:00:00Z", "MEQ", "c-meq", "visitor-NAS-123-456-789"),
            feedback(5, "2021-05-02T10:00:00Z", "MSSS", None, "jean.gagnon@example.org", 5, Some("Très bien")),
        ])
        .await;
    server.wait_caught_up().await;
    server
}

async fn organization_tokens_read_government_and_their_own_figures_only(backend: Backend) {
    let server = loaded(backend).await;
    let ok = |path: &'static str| server.get(path, Some(READ_MSSS));
    assert_eq!(ok("/v1/indicators?fiscal_year=2021-2022").await.0, StatusCode::OK);
    assert_eq!(ok("/v1/indicators?fiscal_year=2021-2022&organization_id=MSSS").await.0, StatusCode::OK);
    assert_eq!(ok("/v1/consultations/c-msss").await.0, StatusCode::OK);
    let (status, body) = ok("/v1/indicators?fiscal_year=2021-2022&organization_id=MEQ").await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::FORBIDDEN, json!("forbidden")));
    assert_eq!(ok("/v1/consultations/c-meq").await.0, StatusCode::FORBIDDEN);
    // The all-scope token reads everything; no token or a wrong one gets 401.
    assert_eq!(server.get("/v1/consultations/c-meq", Some(READ_ALL)).await.0, StatusCode::OK);
    assert_eq!(server.get("/v1/indicators?fiscal_year=2021-2022", None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(server.get("/v1/pipeline", Some("nope")).await.0, StatusCode::UNAUTHORIZED);
    // An ingest token is not a read token.
    assert_eq!(server.get("/v1/pipeline", Some(INGEST_TOKEN)).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn public_read_serves_without_a_token_only_when_switched_on() {
    let server = TestServer::start_with(&[("AGORA_PUBLIC_READ", "true")]).await;
    assert_eq!(server.get("/v1/indicators?fiscal_year=2021-2022", None).await.0, StatusCode::OK);
    assert_eq!(server.get("/v1/pipeline", Some("wrong")).await.0, StatusCode::UNAUTHORIZED);
    let dashboard = server.client.get(format!("{}/", server.url)).send().await.unwrap();
    assert_eq!(dashboard.status(), StatusCode::OK);
    assert!(dashboard.text().await.unwrap().contains("<html lang=\"fr\">"));
}

#[tokio::test]
async fn no_participant_identifier_is_stored_in_clear() {
    let server = loaded(Backend::Embedded).await;
    let (dir, _) = server.stop().await;
    let bytes = all_bytes(dir.path());
    assert!(bytes.len() > 10_000, "the data folder should hold the log and the store");
    for identifier in ["marie.tremblay@example.org", "visitor-NAS-123-456-789", "jean.gagnon@example.org"] {
        assert!(!bytes.windows(identifier.len()).any(|w| w == identifier.as_bytes()), "{identifier} found in clear in the data folder");
    }
    // The pseudonym, on the other hand, is there: HMAC-SHA-256 under the configured key.
    let pseudonym = agora_ingest::Pseudonymizer::new(PSEUDONYM_KEY.as_bytes()).pseudonym("marie.tremblay@example.org");
    assert!(bytes.windows(pseudonym.len()).any(|w| w == pseudonym.as_bytes()));
}

#[tokio::test]
async fn health_and_metrics_need_no_token() {
    let server = loaded(Backend::Embedded).await;
    assert_eq!(server.get("/health/live", None).await.0, StatusCode::OK);
    let (status, ready) = server.get("/health/ready", None).await;
    assert_eq!((status, ready["status"].clone()), (StatusCode::OK, json!("ready")));
    // One rejected event so the rejection counter has a reason label.
    let (_, reply) = server.post_events(&json!([{"event_id": "x"}])).await;
    assert_eq!(reply["rejected"].as_array().unwrap().len(), 1);
    server.get("/v1/indicators?fiscal_year=2021-2022", Some(READ_ALL)).await;
    let metrics = server.client.get(format!("{}/metrics", server.url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("agora_ingest_events_accepted_total 5"), "{metrics}");
    assert!(metrics.contains("agora_ingest_events_rejected_total{reason=\"format\"} 1"), "{metrics}");
    assert!(metrics.contains("agora_projector_lag_events 0"), "{metrics}");
    assert!(metrics.contains("agora_query_request_duration_seconds_bucket{route=\"/v1/indicators\",status=\"200\""), "{metrics}");
    // No personal data in metrics.
    assert!(!metrics.contains("example.org"));
}

on_every_backend!(organization_tokens_read_government_and_their_own_figures_only);
