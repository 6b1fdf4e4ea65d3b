//! `GET /v1/openapi.json` against the real router: every documented operation is routed (none
//! falls through to the router's fallback), documents its responses, and the routes the
//! contract names are all documented.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_is_served_and_every_contract_route_documented() {
    let server = TestServer::start().await;
    let response = server.client.get(format!("{}/v1/openapi.json", server.url)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let doc: Value = response.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();

    for route in [
        "/v1/events",
        "/v1/schemas",
        "/v1/indicators",
        "/v1/indicators/monthly",
        "/v1/exports/indicators.csv",
        "/v1/exports/indicators.parquet",
        "/v1/consultations/{consultation_id}",
        "/v1/pipeline",
        "/v1/openapi.json",
        "/",
        "/health/live",
        "/health/ready",
        "/metrics",
    ] {
        assert!(paths.contains_key(route), "{route} is not documented");
    }
    let mut operations = 0;
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            operations += 1;
            assert!(operation["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path} documents no response");
            let concrete = path.replace("{consultation_id}", "some-consultation");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let reply =
                server.client.request(method.clone(), format!("{}{concrete}", server.url)).bearer_auth(READ_ALL).send().await.unwrap();
            let status = reply.status();
            let body: Value = reply.json().await.unwrap_or(Value::Null);
            assert_ne!(body["error"]["message"], "no such route", "{method} {path} is documented but not routed");
            let documented = operation["responses"].as_object().unwrap();
            assert!(documented.contains_key(status.as_str()), "{method} {path} answered {status}, which is not documented");
        }
    }
    assert!(operations >= 10);
    // The fallback is what an undocumented route gets: the check above can tell them apart.
    let (status, body) = server.get("/v1/not-a-route", Some(READ_ALL)).await;
    assert_eq!((status, body["error"]["message"].as_str()), (StatusCode::NOT_FOUND, Some("no such route")));
}
