//! `agora`: parses the command line, loads the configuration, starts the roles asked for
//! and waits for SIGINT or SIGTERM. Everything else lives in the library.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use agora::app::{open_backends, open_store, run, shutdown_on_signals, Roles};
use agora::config::{Config, DEFAULT_LISTEN};
use agora::demo::{run_demo, DemoOptions};
use agora::synth::{generate, SynthOptions};
use agora_schemas::FiscalYear;
use anyhow::Context;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "agora", version, about = "Measures citizen involvement in digital public consultations")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Place {
    /// Address to serve HTTP on (health, metrics and the role's routes).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Folder of the embedded log and store.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct Synthetic {
    /// Seed of the synthetic history: the same seed gives the same events.
    #[arg(long, default_value_t = 2021)]
    seed: u64,
    /// Participants per consultation relative to the default history (about 650,000 events).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
}

impl Synthetic {
    fn options(&self) -> SynthOptions {
        SynthOptions { seed: self.seed, scale: self.scale, ..SynthOptions::default() }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    Csv,
    Parquet,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the whole service on embedded storage in a fresh folder, loaded with a synthetic history.
    Demo {
        #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// Fresh (missing or empty) folder to use instead of a new temporary one.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        synthetic: Synthetic,
    },
    /// Runs every role (ingest, projector, query) in one process.
    Serve(Place),
    /// Runs the ingest role alone.
    Ingest(Place),
    /// Runs the projector alone.
    Project(Place),
    /// Runs the query role alone.
    Query(Place),
    /// Creates or upgrades the projection store's tables (every role also does this at start).
    Migrate {
        /// Folder of the embedded store.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Rebuilds the read models from the beginning of the log, replacing them at once when done.
    Replay {
        /// Folder of the embedded log and store.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Writes the indicators of a range of fiscal years, whole government and every public
    /// body, as CSV or Parquet (the open-data export; columns in README.md).
    Export {
        #[arg(long, value_enum, default_value = "csv")]
        format: ExportFormat,
        /// File to write; CSV goes to standard output without it.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// First fiscal year, such as 2021-2022 (default: the first the store holds).
        #[arg(long, value_name = "FY")]
        from: Option<FiscalYear>,
        /// Last fiscal year (default: the last the store holds).
        #[arg(long, value_name = "FY")]
        to: Option<FiscalYear>,
        /// Folder of the embedded store.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Recomputes every indicator from the raw event log (polars, independently of the
    /// projector) and lists each figure the store serves differently; exits 1 on any.
    Audit {
        /// Folder of the embedded log and store.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Writes the synthetic history as NDJSON (to standard output without --output).
    Generate {
        #[command(flatten)]
        synthetic: Synthetic,
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Posts an NDJSON file to an ingest role in batches and reports rejections.
    Import {
        file: PathBuf,
        /// Base URL of the ingest role (or its /v1/events URL).
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Ingest token.
        #[arg(long, env = "AGORA_IMPORT_TOKEN", hide_env_values = true)]
        token: String,
        #[arg(long, default_value_t = 1000)]
        batch_size: usize,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    agora::telemetry::init();
    match execute(cli.command).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(command: Command) -> anyhow::Result<ExitCode> {
    let roles = match &command {
        Command::Serve(_) => Roles::ALL,
        Command::Ingest(_) => Roles::INGEST,
        Command::Project(_) => Roles::PROJECT,
        Command::Query(_) => Roles::QUERY,
        _ => Roles::ALL,
    };
    match command {
        Command::Demo { listen, data_dir, synthetic } => {
            let shutdown = shutdown_on_signals()?;
            run_demo(DemoOptions { listen, data_dir, synth: synthetic.options() }, shutdown).await?;
        }
        Command::Serve(place) | Command::Ingest(place) | Command::Project(place) | Command::Query(place) => {
            // Installed first, so a signal during start-up drains instead of killing.
            let shutdown = shutdown_on_signals()?;
            let config = Config::from_env(place.listen, place.data_dir)?;
            if roles.ingest {
                config.require_pseudonym_key()?;
            }
            let backends = open_backends(&config).await?;
            let listener =
                tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("failed to listen on {}", config.listen))?;
            run(config, roles, backends, listener, shutdown).await?;
        }
        Command::Migrate { data_dir } => {
            let config = Config::from_env(None, data_dir)?;
            let store = open_store(&config).await?;
            let version = store.schema_version().await?;
            println!("{} store at schema version {version}", store.backend());
        }
        Command::Replay { data_dir } => {
            let config = Config::from_env(None, data_dir)?;
            let backends = open_backends(&config).await?;
            let bar = agora::progress(0, "replaying");
            let summary = agora_projector::rebuild(&backends.log, &backends.store, config.projector.batch_size, |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })
            .await?;
            bar.finish_and_clear();
            println!("rebuilt the read models from {} records ({} dead-lettered)", summary.records, summary.dead_letters);
        }
        Command::Export { format, output, from, to, data_dir } => {
            let config = Config::from_env(None, data_dir)?;
            let backends = open_backends(&config).await?;
            let format = match format {
                ExportFormat::Csv => agora_query::exports::Format::Csv,
                ExportFormat::Parquet => agora_query::exports::Format::Parquet,
            };
            let rows = agora::export::export(&config, backends, format, from, to, output.as_deref()).await?;
            eprintln!("exported {rows} rows");
        }
        Command::Audit { data_dir } => {
            let config = Config::from_env(None, data_dir)?;
            let backends = open_backends(&config).await?;
            let bar = agora::progress(0, "reading log");
            let report = agora::audit::audit(&backends.log, &backends.store, config.targets.clone(), |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })
            .await?;
            bar.finish_and_clear();
            for d in &report.differences {
                println!(
                    "{} {}: {} recomputed {} served {}",
                    d.fiscal_year,
                    d.organization_id.as_deref().unwrap_or("government"),
                    d.figure,
                    d.recomputed,
                    d.served
                );
            }
            println!(
                "audited {} records ({} undecodable) against {} indicator documents: {} differences",
                report.records,
                report.undecodable,
                report.documents,
                report.differences.len()
            );
            if !report.differences.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Generate { synthetic, output } => {
            let events = tokio::task::spawn_blocking(move || generate(&synthetic.options())).await?;
            let mut out: Box<dyn Write> = match &output {
                Some(path) => Box::new(std::fs::File::create(path).with_context(|| format!("failed to create {}", path.display()))?),
                None => Box::new(std::io::stdout().lock()),
            };
            let mut out = std::io::BufWriter::new(&mut out);
            for event in &events {
                serde_json::to_writer(&mut out, event)?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
            eprintln!("wrote {} events", events.len());
        }
        Command::Import { file, url, token, batch_size } => {
            let summary = agora::import::import(&file, &url, &token, batch_size.clamp(1, agora_ingest::MAX_EVENTS), true).await?;
            println!(
                "accepted {} events, rejected {}, in {:.1} s ({:.0} events/s)",
                summary.accepted,
                summary.rejected.len(),
                summary.elapsed.as_secs_f64(),
                summary.accepted as f64 / summary.elapsed.as_secs_f64().max(1e-9)
            );
            for (line, errors) in summary.rejected.iter().take(20) {
                println!("  line {line}: {}", errors.join("; "));
            }
            if summary.rejected.len() > 20 {
                println!("  … and {} more rejected lines", summary.rejected.len() - 20);
            }
            if !summary.rejected.is_empty() {
                return Ok(ExitCode::from(2));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
