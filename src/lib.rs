//! The `agora` binary's library: configuration, the wiring of roles into processes, and the
//! commands that are not roles (demo, synthetic data, import, export, audit). `main.rs` only parses the
//! command line and calls in here.

pub mod app;
pub mod audit;
pub mod config;
pub mod demo;
pub mod export;
pub mod import;
pub mod synth;
pub mod telemetry;

/// Returns 16 bytes from the operating system's randomness, as hex: for demo secrets.
pub fn random_hex() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    // Each RandomState is seeded from the OS; two of them give 128 unpredictable bits.
    let part = || {
        let mut h = RandomState::new().build_hasher();
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        h.finish()
    };
    format!("{:016x}{:016x}", part(), part())
}

/// Returns a progress bar counting events, for the long commands.
pub fn progress(len: u64, message: &'static str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len).with_message(message);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} ({per_sec}, {eta} left)")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}
