//! `POST /v1/events` against SPEC §2 and §4: every validation rule rejects the event at its
//! index, naming the field and the rule, while valid events in the same body are accepted;
//! body formats, limits and tokens.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn valid_opened() -> Value {
    opened(1, "2021-05-01T10:00:00-04:00", "MSSS", "c-1", "platform", &["online_survey"])
}

/// Returns a copy of `base` with `pointer` set to `value` (or removed when `value` is None).
fn with(base: &Value, pointer: &str, value: Option<Value>) -> Value {
    let mut e = base.clone();
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let target = if parent.is_empty() { &mut e } else { e.pointer_mut(parent).unwrap() };
    match value {
        Some(v) => {
            target[key] = v;
        }
        None => {
            target.as_object_mut().unwrap().remove(key);
        }
    }
    e
}

async fn every_rule_rejects_its_event_by_field_while_valid_events_are_accepted(backend: Backend) {
    let server = TestServer::start_on(backend, &[]).await;
    let opened = valid_opened();
    let visit = visit(2, "2021-05-02T10:00:00Z", "MSSS", "c-1", "person-1");
    let contribution = contribution(3, "2021-05-02T10:00:00Z", "MSSS", "c-1", "person-1", "k-1", "comment");
    let feedback = feedback(4, "2021-05-02T10:00:00Z", "MSSS", None, "person-1", 4, Some("plus de délais"));
    let triage = event(
        5,
        "suggestion.triaged",
        "2021-05-03T10:00:00Z",
        "SCT",
        None,
        None,
        json!({"feedback_event_id": uuid(4), "status": "planned"}),
    );
    let withdrawn = event(
        6,
        "contribution.withdrawn",
        "2021-05-03T10:00:00Z",
        "MSSS",
        Some("c-1"),
        None,
        json!({"contribution_id": "k-1", "reason": "author"}),
    );
    let updated = event(7, "consultation.updated", "2021-05-03T10:00:00Z", "MSSS", Some("c-1"), None, json!({"title_en": "Title"}));
    let far_future = (chrono::Utc::now() + chrono::Duration::hours(25)).to_rfc3339();
    let long = |n: usize| json!("x".repeat(n));

    // (invalid event, the pointer its error must name)
    let cases: Vec<(Value, &str)> = vec![
        (json!("not an object"), "event"),
        (with(&opened, "/event_id", None), "/event_id"),
        (with(&opened, "/event_id", Some(json!("not-a-uuid"))), "/event_id"),
        (with(&opened, "/event_id", Some(json!("0000000000004000800000000000000a"))), "/event_id"),
        (with(&opened, "/event_id", Some(json!(12))), "/event_id"),
        (with(&opened, "/type", None), "/type"),
        (with(&opened, "/type", Some(json!("consultation.deleted"))), "/type"),
        (with(&opened, "/schema_version", None), "/schema_version"),
        (with(&opened, "/schema_version", Some(json!(2))), "/schema_version"),
        (with(&opened, "/schema_version", Some(json!("1"))), "/schema_version"),
        (with(&opened, "/occurred_at", None), "/occurred_at"),
        (with(&opened, "/occurred_at", Some(json!("2021-05-01T10:00:00"))), "/occurred_at"),
        (with(&opened, "/occurred_at", Some(json!("yesterday"))), "/occurred_at"),
        (with(&opened, "/occurred_at", Some(json!(far_future))), "/occurred_at"),
        (with(&opened, "/organization_id", None), "/organization_id"),
        (with(&opened, "/organization_id", Some(json!("M"))), "/organization_id"),
        (with(&opened, "/organization_id", Some(json!("MS SS"))), "/organization_id"),
        (with(&opened, "/organization_id", Some(long(65))), "/organization_id"),
        (with(&opened, "/consultation_id", None), "/consultation_id"),
        (with(&opened, "/consultation_id", Some(json!(""))), "/consultation_id"),
        (with(&opened, "/consultation_id", Some(json!("c/1"))), "/consultation_id"),
        (with(&opened, "/consultation_id", Some(long(129))), "/consultation_id"),
        (with(&opened, "/participant_id", Some(json!("p"))), "/participant_id"),
        (with(&opened, "/surprise", Some(json!(1))), "/surprise"),
        (with(&opened, "/data", None), "/data"),
        (with(&opened, "/data", Some(json!([]))), "/data"),
        (with(&opened, "/data/extra", Some(json!(1))), "/data/extra"),
        (with(&opened, "/data/title_fr", None), "/data/title_fr"),
        (with(&opened, "/data/title_fr", Some(json!(""))), "/data/title_fr"),
        (with(&opened, "/data/title_fr", Some(long(501))), "/data/title_fr"),
        (with(&opened, "/data/title_en", Some(long(501))), "/data/title_en"),
        (with(&opened, "/data/hosted_on", Some(json!("elsewhere"))), "/data/hosted_on"),
        (with(&opened, "/data/hosted_on", None), "/data/hosted_on"),
        (with(&opened, "/data/methods", None), "/data/methods"),
        (with(&opened, "/data/methods", Some(json!([]))), "/data/methods"),
        (with(&opened, "/data/methods", Some(json!(["online_survey", "telepathy"]))), "/data/methods/1"),
        (with(&opened, "/data/methods", Some(json!(["phone", "online_vote", "phone"]))), "/data/methods/2"),
        (with(&opened, "/data/methods", Some(json!("phone"))), "/data/methods"),
        (with(&updated, "/data", Some(json!({}))), "/data"),
        (with(&updated, "/data", Some(json!({"methods": []}))), "/data/methods"),
        (with(&visit, "/participant_id", None), "/participant_id"),
        (with(&visit, "/participant_id", Some(json!(""))), "/participant_id"),
        (with(&visit, "/participant_id", Some(long(257))), "/participant_id"),
        (with(&visit, "/data/channel", Some(json!("fax"))), "/data/channel"),
        (with(&visit, "/consultation_id", None), "/consultation_id"),
        (with(&contribution, "/data/contribution_id", None), "/data/contribution_id"),
        (with(&contribution, "/data/contribution_id", Some(long(129))), "/data/contribution_id"),
        (with(&contribution, "/data/kind", Some(json!("essay"))), "/data/kind"),
        (with(&withdrawn, "/data/reason", Some(json!("bored"))), "/data/reason"),
        (with(&withdrawn, "/participant_id", Some(json!("p"))), "/participant_id"),
        (with(&feedback, "/data/satisfaction", Some(json!(6))), "/data/satisfaction"),
        (with(&feedback, "/data/satisfaction", Some(json!(0))), "/data/satisfaction"),
        (with(&feedback, "/data/satisfaction", Some(json!(4.5))), "/data/satisfaction"),
        (with(&feedback, "/data/suggestion", Some(long(2001))), "/data/suggestion"),
        (with(&feedback, "/participant_id", None), "/participant_id"),
        (with(&triage, "/data/feedback_event_id", Some(json!("nope"))), "/data/feedback_event_id"),
        (with(&triage, "/data/status", Some(json!("done"))), "/data/status"),
        (with(&triage, "/participant_id", Some(json!("p"))), "/participant_id"),
        (
            event(90, "consultation.cancelled", "2021-05-01T10:00:00Z", "MSSS", Some("c-1"), None, json!({"reason": "x".repeat(501)})),
            "/data/reason",
        ),
        (
            event(
                91,
                "consultation.results_published",
                "2021-05-01T10:00:00Z",
                "MSSS",
                Some("c-1"),
                None,
                json!({"report_url": "x".repeat(2001)}),
            ),
            "/data/report_url",
        ),
        (event(92, "consultation.closed", "2021-05-01T10:00:00Z", "MSSS", Some("c-1"), None, json!({"note": 1})), "/data/note"),
    ];

    let valid = vec![opened.clone(), visit, contribution, feedback, triage, withdrawn, updated];
    let mut body = Vec::new();
    let mut expected = Vec::new();
    for (i, (invalid, field)) in cases.iter().enumerate() {
        // Interleave: a valid event, then an invalid one.
        body.push(valid[i % valid.len()].clone());
        expected.push((body.len(), *field));
        body.push(invalid.clone());
    }
    let (status, reply) = server.post_events(&Value::Array(body.clone())).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
    assert_eq!(reply["accepted"], json!(cases.len()), "{reply}");
    let rejected = reply["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), cases.len(), "{reply}");
    for (rejection, (index, field)) in rejected.iter().zip(&expected) {
        assert_eq!(rejection["index"], json!(index), "{rejection}");
        let errors: Vec<&str> = rejection["errors"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
        assert!(
            errors.iter().any(|e| e.starts_with(&format!("{field}: "))),
            "event {index} should be rejected naming {field}, got {errors:?}"
        );
    }
    // The event_id of a rejected event is echoed when it is a string, null otherwise.
    assert_eq!(rejected[0]["event_id"], Value::Null);
    assert_eq!(rejected[2]["event_id"], json!("not-a-uuid"));
}

async fn accepts_normalized_events_and_names_every_broken_rule_at_once(backend: Backend) {
    let server = TestServer::start_on(backend, &[]).await;
    let mut upper = valid_opened();
    upper["event_id"] = json!("ABCDEF00-0000-4000-8000-00000000000A");
    upper["occurred_at"] = json!("2021-05-01T10:00:00.123456789-04:00");
    upper["data"]["title_fr"] = json!("é".repeat(500)); // 500 characters, 1,000 bytes
    let (status, reply) = server.post_events(&upper).await;
    assert_eq!((status, reply["accepted"].clone()), (StatusCode::ACCEPTED, json!(1)), "{reply}");

    let broken = json!({"event_id": "x", "type": "participant.visited", "schema_version": 1,
        "occurred_at": "2021-05-01T10:00:00Z", "organization_id": "?", "data": {"channel": "pigeon"}});
    let (_, reply) = server.post_events(&json!([broken])).await;
    let errors: Vec<String> = serde_json::from_value(reply["rejected"][0]["errors"].clone()).unwrap();
    for field in ["/event_id", "/organization_id", "/consultation_id", "/participant_id", "/data/channel"] {
        assert!(errors.iter().any(|e| e.starts_with(field)), "{field} missing from {errors:?}");
    }
}

async fn takes_ndjson_with_bad_lines_rejected_at_their_index(backend: Backend) {
    let server = TestServer::start_on(backend, &[]).await;
    let body = format!("{}\n{{not json\n\n{}\n", valid_opened(), visit(2, "2021-05-02T10:00:00Z", "MSSS", "c-1", "p"));
    let response = server
        .client
        .post(format!("{}/v1/events", server.url))
        .bearer_auth(INGEST_TOKEN)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply["accepted"], json!(2));
    assert_eq!(reply["rejected"][0]["index"], json!(1));
    assert!(reply["rejected"][0]["errors"][0].as_str().unwrap().contains("not valid JSON"));
}

async fn refuses_bad_bodies_limits_and_tokens_with_json_errors(backend: Backend) {
    let server = TestServer::start_on(backend, &[]).await;
    let post = |body: String, token: Option<&str>| {
        let mut request = server.client.post(format!("{}/v1/events", server.url)).header("content-type", "application/json").body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let check = |response: reqwest::Response, status: StatusCode, code: &'static str| async move {
        assert_eq!(response.status(), status);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], json!(code), "{body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    };
    check(post("[]".into(), None).await.unwrap(), StatusCode::UNAUTHORIZED, "unauthorized").await;
    check(post("[]".into(), Some("wrong")).await.unwrap(), StatusCode::UNAUTHORIZED, "unauthorized").await;
    check(post("{not json".into(), Some(INGEST_TOKEN)).await.unwrap(), StatusCode::BAD_REQUEST, "malformed_body").await;
    check(post("42".into(), Some(INGEST_TOKEN)).await.unwrap(), StatusCode::BAD_REQUEST, "malformed_body").await;
    let too_many = Value::Array(vec![json!({}); 10_001]).to_string();
    check(post(too_many, Some(INGEST_TOKEN)).await.unwrap(), StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    let too_big = format!("[\"{}\"]", "x".repeat(10 * 1024 * 1024));
    check(post(too_big, Some(INGEST_TOKEN)).await.unwrap(), StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;

    // 10,000 events is still allowed; the empty batch too.
    let ten_thousand: Vec<Value> = (0..10_000).map(|i| visit(1_000 + i, "2021-05-02T10:00:00Z", "MSSS", "c-1", "p")).collect();
    let (status, reply) = server.post_events(&Value::Array(ten_thousand)).await;
    assert_eq!((status, reply["accepted"].clone()), (StatusCode::ACCEPTED, json!(10_000)));
    let (status, reply) = server.post_events(&json!([])).await;
    assert_eq!((status, reply), (StatusCode::ACCEPTED, json!({"accepted": 0, "rejected": []})));
}

async fn serves_a_schema_per_event_type(backend: Backend) {
    let server = TestServer::start_on(backend, &[]).await;
    let (status, schemas) = server.get("/v1/schemas", None).await;
    assert_eq!(status, StatusCode::OK);
    let types: Vec<&String> = schemas.as_object().unwrap().keys().collect();
    assert_eq!(types.len(), 10);
    assert_eq!(schemas["contribution.submitted"]["properties"]["data"]["properties"]["kind"]["enum"].as_array().unwrap().len(), 5);
}

on_every_backend!(
    every_rule_rejects_its_event_by_field_while_valid_events_are_accepted,
    accepts_normalized_events_and_names_every_broken_rule_at_once,
    takes_ndjson_with_bad_lines_rejected_at_their_index,
    refuses_bad_bodies_limits_and_tokens_with_json_errors,
    serves_a_schema_per_event_type,
);
