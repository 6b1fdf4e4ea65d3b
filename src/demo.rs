//! `agora demo`: the whole service on the embedded backends in a fresh data folder, loaded
//! with the synthetic history through the same validation and pseudonymization as
//! `POST /v1/events`, projected, then served with public read on.

use std::path::PathBuf;
use std::time::Instant;

use agora_ingest::{check_elements, Element, Pseudonymizer};
use agora_projector::{Projector, ProjectorMetrics};
use anyhow::{bail, Context};
use indicatif::ProgressBar;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::{open_backends, run, Roles};
use crate::config::Config;
use crate::progress;
use crate::synth::{generate, SynthOptions};

/// What `agora demo` takes.
pub struct DemoOptions {
    pub listen: std::net::SocketAddr,
    pub data_dir: Option<PathBuf>,
    pub synth: SynthOptions,
}

/// Runs the demo until `shutdown`.
pub async fn run_demo(options: DemoOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let data_dir = match options.data_dir {
        Some(dir) => {
            if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
                bail!("--data-dir {} is not empty; the demo needs a fresh folder", dir.display());
            }
            dir
        }
        None => std::env::temp_dir().join(format!("agora-demo-{}", &crate::random_hex()[..12])),
    };
    let ingest_token = format!("demo-{}", crate::random_hex());
    let mut config = Config::load(Some(options.listen), Some(data_dir.clone()), |_| None)?;
    config.public_read = true;
    config.pseudonym_key = Some(crate::random_hex());
    config.ingest_tokens = vec![agora_ingest::IngestToken { source: "demo".into(), token: ingest_token.clone() }];
    let backends = open_backends(&config).await?;

    let started = Instant::now();
    let spinner = ProgressBar::new_spinner().with_message("generating the synthetic history");
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let synth = options.synth.clone();
    let raw = tokio::task::spawn_blocking(move || generate(&synth)).await?;
    spinner.finish_with_message(format!("generated {} events", raw.len()));

    let bar = progress(raw.len() as u64, "ingesting");
    let pseudonymizer = Pseudonymizer::new(config.require_pseudonym_key()?.as_bytes());
    let mut chunks = raw.into_iter().peekable();
    while chunks.peek().is_some() {
        let chunk: Vec<Element> = chunks.by_ref().take(10_000).map(Element::Json).collect();
        let n = chunk.len() as u64;
        let p = pseudonymizer.clone();
        let (events, rejected) = tokio::task::spawn_blocking(move || check_elements(chunk.into_iter(), &p)).await?;
        if let Some((first, _)) = rejected.first() {
            bail!("synthetic event rejected: {}", first.errors.join("; "));
        }
        backends.log.append(&events).await.context("failed to append the synthetic history")?;
        bar.inc(n);
    }
    bar.finish();

    let projector = Projector::new(
        backends.log.clone(),
        backends.store.clone(),
        config.projector.clone(),
        ProjectorMetrics::register(&prometheus::Registry::new())?,
    );
    let total = agora_eventlog::lag(&backends.log.end_positions().await?, &Default::default());
    let bar = progress(total, "projecting");
    loop {
        let step = projector.step().await?;
        bar.set_position(total - step.lag_events.min(total));
        if step.lag_events == 0 {
            break;
        }
    }
    bar.finish();

    let listener = TcpListener::bind(config.listen).await.with_context(|| format!("failed to listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    println!();
    println!("Agora demo ready in {:.1} s", started.elapsed().as_secs_f64());
    println!("  dashboard:    http://{address}/");
    println!("  indicators:   http://{address}/v1/indicators?fiscal_year=2025-2026");
    println!("  ingest token: {ingest_token}");
    println!("  data folder:  {}", data_dir.display());
    println!("  try:          curl -s -X POST http://{address}/v1/events -H 'Authorization: Bearer {ingest_token}' -H 'Content-Type: application/json' -d @events.json");
    println!("Press Ctrl-C to stop.");
    run(config, Roles::ALL, backends, listener, shutdown).await
}
