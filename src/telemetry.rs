//! Structured logs on standard error: human-readable by default, JSON lines with
//! `AGORA_LOG_FORMAT=json`; the level comes from `AGORA_LOG` (or `RUST_LOG`), `info` by default.

use tracing_subscriber::EnvFilter;

/// Installs the process-wide log subscriber.
pub fn init() {
    let filter =
        std::env::var("AGORA_LOG").or_else(|_| std::env::var("RUST_LOG")).map(EnvFilter::new).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("AGORA_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
