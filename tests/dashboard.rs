//! The dashboard page in a real headless browser: Debian's `chromium`, driven through
//! `chromedriver` (WebDriver), against a running Agora loaded with the folding scenario's
//! known events. The page must show the expected figures, switch language and fiscal year,
//! sort the public bodies' table from the keyboard, and leave a screenshot as an artifact.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// A private chromedriver on a free port, killed on drop.
struct Driver(Child, u16);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_driver() -> Driver {
    let port = free_port();
    let bin = std::env::var("AGORA_CHROMEDRIVER_BIN").unwrap_or_else(|_| "chromedriver".into());
    let child = Command::new(&bin)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("failed to start {bin}: {e}; run scripts/test.sh, which installs chromium-driver"));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "chromedriver did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Driver(child, port)
}

async fn browser(driver: &Driver) -> Client {
    let chromium = std::env::var("AGORA_CHROMIUM_BIN").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({"binary": chromium, "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,2000"]}),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.1))
        .await
        .expect("failed to open a chromium session")
}

/// Waits until the page has loaded `state` ("fr 2021-2022 "…) and returns the text of `css`.
async fn text_when_loaded(client: &Client, state: &str, css: &str) -> String {
    let loaded = format!("body[data-loaded=\"{state}\"]");
    client
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(&loaded))
        .await
        .unwrap_or_else(|e| panic!("page never showed {state}: {e}"));
    client.find(Locator::Css(css)).await.unwrap().text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_figures_switches_language_and_year_in_a_real_browser() {
    let server = TestServer::start_with(&[("AGORA_PUBLIC_READ", "true")]).await;
    server.ingest(&folding_scenario()).await;
    server.wait_caught_up().await;
    let driver = tokio::task::spawn_blocking(start_driver).await.unwrap();
    let client = browser(&driver).await;
    let outcome = check_page(&client, &server.url).await;
    // The screenshot is kept whether the checks passed or not: it is the test's artifact.
    let png = client.screenshot().await.unwrap();
    let artifact = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&artifact, &png).unwrap();
    println!("screenshot: {}", artifact.display());
    client.close().await.unwrap();
    outcome.unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} bytes", png.len());
}

async fn check_page(client: &Client, url: &str) -> Result<(), String> {
    client.goto(&format!("{url}/?fy=2021-2022")).await.map_err(|e| e.to_string())?;
    // French by default, with the contract's figures for 2021-2022 (tests/folding.rs).
    let opened = text_when_loaded(client, "fr 2021-2022 ", "#consultations dd[data-key=opened]").await;
    assert_eq!(opened, "3");
    assert_eq!(client.find(Locator::Css("#consultations dd[data-key=on_platform]")).await.unwrap().text().await.unwrap(), "2");
    assert_eq!(client.find(Locator::Css("#participation dd[data-key=contributions]")).await.unwrap().text().await.unwrap(), "3");
    assert_eq!(
        client.find(Locator::Css("h1")).await.unwrap().text().await.unwrap(),
        "Participation citoyenne aux consultations numériques"
    );
    let growth = client.find(Locator::Css("[data-target=platform_growth]")).await.unwrap().text().await.unwrap();
    assert!(growth.contains("Croissance sur la plateforme") && growth.contains("100"), "{growth}");
    // The bodies' table: MSSS leads on the platform that year; sorting by name from the
    // keyboard puts MEQ first.
    let first = client.find(Locator::Css("#bodies tbody tr")).await.unwrap().attr("data-org").await.unwrap();
    assert_eq!(first.as_deref(), Some("MSSS"));
    let by_name = client.find(Locator::Css("#bodies button[data-sort=organization_id]")).await.unwrap();
    by_name.send_keys("\u{e007}").await.unwrap(); // Enter
    let first = client.find(Locator::Css("#bodies tbody tr")).await.unwrap().attr("data-org").await.unwrap();
    assert_eq!(first.as_deref(), Some("MEQ"));
    let sorted = client.find(Locator::Css("#bodies th[aria-sort]")).await.unwrap().attr("aria-sort").await.unwrap();
    assert_eq!(sorted.as_deref(), Some("ascending"));
    // The monthly chart has the twelve months, and the freshness line says the figures are current.
    let months = client.find_all(Locator::Css("#monthly-chart .col")).await.unwrap().len();
    assert_eq!(months, 12);
    assert_eq!(client.find(Locator::Css("#status")).await.unwrap().text().await.unwrap(), "Données à jour");

    // English.
    client.find(Locator::Css("#lang")).await.unwrap().click().await.unwrap();
    let title = text_when_loaded(client, "en 2021-2022 ", "h1").await;
    assert_eq!(title, "Citizen involvement in digital consultations");
    let lang: Value = client.execute("return document.documentElement.lang", vec![]).await.unwrap();
    assert_eq!(lang, json!("en"));
    assert_eq!(client.find(Locator::Css("#status")).await.unwrap().text().await.unwrap(), "Figures up to date");

    // Another fiscal year: 2020-2021 has c0 alone.
    client.find(Locator::Css("#fy")).await.unwrap().select_by_value("2020-2021").await.unwrap();
    let opened = text_when_loaded(client, "en 2020-2021 ", "#consultations dd[data-key=opened]").await;
    assert_eq!(opened, "1");
    // And one public body.
    let org = client.find(Locator::Css("#org")).await.unwrap();
    org.send_keys("MSSS\u{e007}").await.unwrap();
    let opened = text_when_loaded(client, "en 2020-2021 MSSS", "#consultations dd[data-key=opened]").await;
    assert_eq!(opened, "1");
    client.find(Locator::Css("#fy")).await.unwrap().select_by_value("2021-2022").await.unwrap();
    let opened = text_when_loaded(client, "en 2021-2022 MSSS", "#consultations dd[data-key=opened]").await;
    assert_eq!(opened, "2");
    Ok(())
}
