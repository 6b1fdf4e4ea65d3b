//! The folding rules of SPEC §2 and the indicators of §3, end to end through HTTP:
//! duplicates, out-of-order updates with the `occurred_at` tie rule, withdrawals before
//! their submission, participation before the opening, cancelled consultations, repeated
//! feedback and triage, and fiscal-year boundaries at local midnight in EDT and EST.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn check_government(doc: &Value) {
    assert_eq!(doc["fiscal_year"], json!("2021-2022"));
    assert_eq!(doc["organization_id"], Value::Null);
    assert_eq!(
        doc["consultations"],
        json!({"opened": 3, "on_platform": 2, "third_party": 1, "with_digital_participation": 2, "closed": 3, "with_results_published": 2})
    );
    assert_eq!(
        doc["participation"],
        json!({
            "unique_participants": 2, "contributions": 3,
            "contributions_by_kind": {"comment": 1, "survey_response": 1, "proposal": 1, "vote": 0, "brief": 0},
            "visitors": 4, "visitor_conversion": 0.5
        })
    );
    assert_eq!(doc["satisfaction"], json!({"responses": 4, "mean": 3.25, "csat": 0.5}));
    assert_eq!(doc["results"], json!({"published_share": 2.0 / 3.0, "median_days_to_results": 5.75}));
    assert_eq!(doc["suggestions"], json!({"received": 2, "answered": 1, "implemented": 1}));
    assert_eq!(
        doc["targets"],
        json!([
            {"id": "platform_growth", "value": 1.0, "target": 0.5, "met": true, "numerator": 2, "denominator": 1},
            {"id": "digital_share", "value": 2.0 / 3.0, "target": 0.75, "met": false, "numerator": 2, "denominator": 3}
        ])
    );
}

fn check_msss(doc: &Value) {
    assert_eq!(doc["organization_id"], json!("MSSS"));
    assert_eq!(doc["consultations"]["opened"], json!(2));
    assert_eq!(doc["consultations"]["on_platform"], json!(1));
    assert_eq!(doc["participation"]["contributions"], json!(2));
    assert_eq!(doc["participation"]["unique_participants"], json!(1));
    assert_eq!(doc["satisfaction"]["responses"], json!(3));
    assert_eq!(doc["satisfaction"]["mean"], json!(10.0 / 3.0));
    assert_eq!(doc["suggestions"], json!({"received": 1, "answered": 1, "implemented": 1}));
    // Growth over 2020-2021 for MSSS alone: 1 → 1.
    assert_eq!(doc["targets"][0]["value"], json!(0.0));
    assert_eq!(doc["targets"][0]["met"], json!(false));
}

async fn figures_after(backend: Backend, events: Vec<Value>, batch: usize) -> (Value, Value, Value, Value) {
    let server = TestServer::start_on(backend, &[]).await;
    for chunk in events.chunks(batch) {
        server.ingest(chunk).await;
    }
    server.wait_caught_up().await;
    let government = server.indicators("2021-2022", None).await;
    let msss = server.indicators("2021-2022", Some("MSSS")).await;
    let (_, c1) = server.get("/v1/consultations/c1", Some(READ_ALL)).await;
    let (_, c4) = server.get("/v1/consultations/c4", Some(READ_ALL)).await;
    (government, msss, c1, c4)
}

async fn scenario_gives_the_exact_figures_of_the_contract(backend: Backend) {
    let (government, msss, c1, c4) = figures_after(backend, folding_scenario(), 1_000).await;
    check_government(&government);
    check_msss(&msss);
    assert_eq!(c1["organization_id"], json!("MSSS"));
    assert_eq!(c1["fiscal_year"], json!("2021-2022"));
    assert_eq!(c1["status"], json!("closed"));
    assert_eq!(c1["hosted_on"], json!("platform"));
    assert_eq!(c1["title_fr"], json!("Nouveau titre"));
    assert_eq!(c1["methods"], json!(["online_survey"]));
    assert_eq!(c1["offers_digital_participation"], json!(true));
    assert_eq!(c1["contributions"], json!(1));
    assert_eq!(c1["unique_participants"], json!(1));
    assert_eq!(c1["visitors"], json!(2));
    assert_eq!(c1["results_published"], json!(true));
    // A cancelled consultation is left out of the indicators but shows its own figures.
    assert_eq!(c4["status"], json!("cancelled"));
    assert_eq!(c4["contributions"], json!(1));
    assert_eq!(c4["contributions_by_kind"]["brief"], json!(1));
}

async fn arrival_order_and_batching_do_not_change_any_figure(backend: Backend) {
    let mut reversed = folding_scenario();
    reversed.reverse();
    let (government, msss, c1, _) = figures_after(backend, reversed, 7).await;
    check_government(&government);
    check_msss(&msss);
    let (_, _, expected_c1, _) = figures_after(backend, folding_scenario(), 1_000).await;
    assert_eq!(c1, expected_c1);
}

async fn unknown_and_malformed_requests_are_answered_as_the_contract_says(backend: Backend) {
    let server = TestServer::start_on(backend, &[]).await;
    let (status, body) = server.get("/v1/consultations/never-opened", Some(READ_ALL)).await;
    assert_eq!((status, body["error"]["code"].clone()), (StatusCode::NOT_FOUND, json!("not_found")));
    for bad in ["2021-2023", "2021", "21-22", "", "2021-2022x"] {
        let (status, body) = server.get(&format!("/v1/indicators?fiscal_year={bad}"), Some(READ_ALL)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (status, _) = server.get("/v1/indicators", Some(READ_ALL)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A year without data: zeros and nulls, not 404.
    let empty = server.indicators("1999-2000", None).await;
    assert_eq!(empty["consultations"]["opened"], json!(0));
    assert_eq!(empty["participation"]["visitor_conversion"], Value::Null);
    assert_eq!(empty["satisfaction"]["mean"], Value::Null);
    assert_eq!(empty["results"]["median_days_to_results"], Value::Null);
    assert_eq!(empty["targets"][0]["value"], Value::Null);
    assert_eq!(empty["targets"][0]["met"], Value::Null);
    assert_eq!(empty["participation"]["contributions_by_kind"]["vote"], json!(0));
}

async fn fiscal_years_turn_at_local_midnight_in_edt_and_est(backend: Backend) {
    let server = TestServer::start_on(backend, &[]).await;
    server
        .ingest(&[
            // 2022: April 1 is in EDT (UTC-4).
            opened(1, "2022-04-01T03:59:59.999Z", "MSSS", "edt-before", "platform", &["online_survey"]),
            opened(2, "2022-04-01T00:00:00-04:00", "MSSS", "edt-after", "platform", &["online_survey"]),
            // 1986: daylight time began on April 27, so April 1 was in EST (UTC-5).
            opened(3, "1986-04-01T04:59:59.999Z", "MSSS", "est-before", "platform", &["online_survey"]),
            opened(4, "1986-04-01T05:00:00Z", "MSSS", "est-after", "platform", &["online_survey"]),
            // Feedback follows its own occurred_at; finer digits than the millisecond are cut.
            feedback(5, "2022-04-01T03:59:59.9999Z", "MSSS", None, "p1", 5, None),
            feedback(6, "2022-04-01T04:00:00.0001Z", "MSSS", None, "p1", 1, None),
        ])
        .await;
    server.wait_caught_up().await;
    for (consultation, fiscal_year) in
        [("edt-before", "2021-2022"), ("edt-after", "2022-2023"), ("est-before", "1985-1986"), ("est-after", "1986-1987")]
    {
        let (_, body) = server.get(&format!("/v1/consultations/{consultation}"), Some(READ_ALL)).await;
        assert_eq!(body["fiscal_year"], json!(fiscal_year), "{consultation}");
    }
    assert_eq!(server.indicators("2021-2022", None).await["satisfaction"]["mean"], json!(5.0));
    assert_eq!(server.indicators("2022-2023", None).await["satisfaction"]["mean"], json!(1.0));
    assert_eq!(server.indicators("1986-1987", None).await["consultations"]["opened"], json!(1));
}

async fn monthly_series_follow_the_folding_rules_and_add_up_to_the_year(backend: Backend) {
    let server = TestServer::start_on(backend, &[]).await;
    server.ingest(&folding_scenario()).await;
    server.wait_caught_up().await;
    for org in [None, Some("MSSS"), Some("MEQ")] {
        let query = org.map_or(String::new(), |o| format!("&organization_id={o}"));
        let (status, series) = server.get(&format!("/v1/indicators/monthly?fiscal_year=2021-2022{query}"), Some(READ_ALL)).await;
        assert_eq!(status, StatusCode::OK, "{series}");
        let year = server.indicators("2021-2022", org).await;
        let months = series["months"].as_array().unwrap();
        let names: Vec<&str> = months.iter().map(|m| m["month"].as_str().unwrap()).collect();
        assert_eq!(names.first().copied(), Some("2021-04"));
        assert_eq!(names.last().copied(), Some("2022-03"));
        assert_eq!(names.len(), 12);
        let sum = |field: &str| months.iter().map(|m| m[field].as_u64().unwrap()).sum::<u64>();
        assert_eq!(sum("consultations_opened"), year["consultations"]["opened"].as_u64().unwrap(), "{org:?}");
        assert_eq!(sum("contributions"), year["participation"]["contributions"].as_u64().unwrap(), "{org:?}");
        assert_eq!(sum("satisfaction_responses"), year["satisfaction"]["responses"].as_u64().unwrap(), "{org:?}");
    }
    let (_, series) = server.get("/v1/indicators/monthly?fiscal_year=2021-2022", Some(READ_ALL)).await;
    let month = |name: &str| series["months"].as_array().unwrap().iter().find(|m| m["month"] == name).unwrap().clone();
    // c1 and c2 opened in May (c4, cancelled, does not count); c3 in September.
    assert_eq!(month("2021-05")["consultations_opened"], json!(2));
    assert_eq!(month("2021-09")["consultations_opened"], json!(1));
    // June: k1 (its earliest submission) and k3, both by p1; k2 is withdrawn, k5 is in c4.
    assert_eq!((month("2021-06")["contributions"].clone(), month("2021-06")["unique_participants"].clone()), (json!(2), json!(1)));
    assert_eq!(month("2021-09")["contributions"], json!(1));
    assert_eq!(month("2021-05")["contributions"], json!(0));
    // Every counted response is p1's latest, in July: the month holds the year's mean.
    let year = server.indicators("2021-2022", None).await;
    assert_eq!(month("2021-07")["satisfaction_mean"], year["satisfaction"]["mean"]);
    assert_eq!(month("2021-06")["satisfaction_mean"], Value::Null);

    // Same rules as /v1/indicators: a fiscal year is required, and scopes hold.
    let (status, _) = server.get("/v1/indicators/monthly", Some(READ_ALL)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = server.get("/v1/indicators/monthly?fiscal_year=2021-2022&organization_id=MEQ", Some(READ_MSSS)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = server.get("/v1/indicators/monthly?fiscal_year=2021-2022", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

on_every_backend!(
    monthly_series_follow_the_folding_rules_and_add_up_to_the_year,
    scenario_gives_the_exact_figures_of_the_contract,
    arrival_order_and_batching_do_not_change_any_figure,
    unknown_and_malformed_requests_are_answered_as_the_contract_says,
    fiscal_years_turn_at_local_midnight_in_edt_and_est,
);
