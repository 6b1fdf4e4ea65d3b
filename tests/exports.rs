//! Open-data exports on every backend: `GET /v1/exports/indicators.csv` and `.parquet`, and
//! `agora export`, read back with polars, give exactly the figures of `/v1/indicators` for
//! every fiscal year, for the whole government and each public body; a public body's token
//! exports only its own rows beside the government's.

mod common;

use std::io::Cursor;
use std::process::Command;

use common::*;
use polars::prelude::*;
use reqwest::StatusCode;
use serde_json::Value;

/// The figures of row `i` as (column, value) pairs, values as JSON.
fn row(frame: &DataFrame, i: usize) -> Vec<(String, Value)> {
    frame
        .columns()
        .iter()
        .map(|c| {
            let value = match c.get(i).unwrap() {
                AnyValue::Null => Value::Null,
                AnyValue::String(s) => Value::from(s),
                AnyValue::StringOwned(s) => Value::from(s.as_str()),
                AnyValue::Boolean(b) => Value::from(b),
                AnyValue::Float64(f) => Value::from(f),
                AnyValue::UInt64(n) => Value::from(n),
                AnyValue::Int64(n) => Value::from(n),
                other => panic!("unexpected value {other:?} in {}", c.name()),
            };
            (c.name().to_string(), value)
        })
        .collect()
}

/// Checks that every row of `frame` holds the figures `/v1/indicators` serves for its scope,
/// and returns the scopes seen.
async fn matches_the_api(server: &TestServer, frame: &DataFrame) -> Vec<(String, Option<String>)> {
    let mut scopes = Vec::new();
    for i in 0..frame.height() {
        let cells = row(frame, i);
        let get = |name: &str| cells.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap();
        let fiscal_year = get("fiscal_year").as_str().unwrap().to_owned();
        let organization = get("organization_id").as_str().map(str::to_owned);
        let doc = server.indicators(&fiscal_year, organization.as_deref()).await;
        for (name, pointer, _, _) in agora_query::exports::COLUMNS {
            assert_eq!(get(name), doc.pointer(pointer).cloned().unwrap(), "{name} of {fiscal_year} {organization:?}");
        }
        for target in doc["targets"].as_array().unwrap() {
            for (field, _) in agora_query::exports::TARGET_FIELDS {
                assert_eq!(get(&format!("target_{}_{field}", target["id"].as_str().unwrap())), target[*field]);
            }
        }
        scopes.push((fiscal_year, organization));
    }
    scopes
}

async fn download(server: &TestServer, path: &str, token: &str) -> Vec<u8> {
    let response = server.client.get(format!("{}{path}", server.url)).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    response.bytes().await.unwrap().to_vec()
}

async fn exports_read_back_with_the_served_figures(backend: Backend) {
    let server = TestServer::start_on(backend, &[]).await;
    server.ingest(&history(0.01, 51)).await;
    server.wait_caught_up().await;

    let csv = download(&server, "/v1/exports/indicators.csv?from=2022-2023&to=2024-2025", READ_ALL).await;
    let text = String::from_utf8(csv.clone()).expect("the CSV is UTF-8");
    assert!(text.starts_with("fiscal_year,organization_id,consultations_opened,"), "{}", &text[..80]);
    let frame = CsvReadOptions::default().with_infer_schema_length(None).into_reader_with_file_handle(Cursor::new(csv)).finish().unwrap();
    let scopes = matches_the_api(&server, &frame).await;
    let organizations = scopes.iter().filter(|(fy, _)| fy == "2022-2023").count() - 1;
    assert!(organizations >= 10, "{organizations} public bodies");
    assert_eq!(scopes.len(), 3 * (organizations + 1), "three fiscal years, government and every body");
    assert_eq!(scopes[0], ("2022-2023".to_owned(), None));

    let parquet = download(&server, "/v1/exports/indicators.parquet?from=2022-2023&to=2024-2025", READ_ALL).await;
    let frame = ParquetReader::new(Cursor::new(parquet)).finish().unwrap();
    assert_eq!(matches_the_api(&server, &frame).await, scopes);

    // A public body exports the government's rows and its own, nothing else.
    let own = download(&server, "/v1/exports/indicators.parquet", READ_MSSS).await;
    let frame = ParquetReader::new(Cursor::new(own)).finish().unwrap();
    let scopes = matches_the_api(&server, &frame).await;
    assert!(scopes.iter().all(|(_, org)| org.is_none() || org.as_deref() == Some("MSSS")), "{scopes:?}");
    assert_eq!(scopes.len(), 2 * FISCAL_YEARS.len(), "{scopes:?}");

    let (status, body) = server.get("/v1/exports/indicators.csv?from=2025-2026&to=2021-2022", Some(READ_ALL)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = server.get("/v1/exports/indicators.csv?from=2021", Some(READ_ALL)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = server.get("/v1/exports/indicators.csv", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // `agora export` writes the same rows to files, from the store alone.
    let file = server.dir.path().join("indicators.parquet");
    let output = Command::new(env!("CARGO_BIN_EXE_agora"))
        .args(["export", "--format", "parquet", "--from", "2022-2023", "--to", "2024-2025", "--output"])
        .arg(&file)
        .arg("--data-dir")
        .arg(server.dir.path())
        .envs(server.services.env())
        .env("AGORA_LOG", "warn")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let frame = ParquetReader::new(std::fs::File::open(&file).unwrap()).finish().unwrap();
    assert_eq!(matches_the_api(&server, &frame).await.len(), 3 * (organizations + 1));
}

on_every_backend!(exports_read_back_with_the_served_figures);
