#!/usr/bin/env bash
# Sets up and runs every Agora test on this machine: the README's test command, and all
# that .ci/run calls.
#
# - Reuses a Cargo build cache outside the clone ($AGORA_CACHE, default ~/.cache/agora) so a
#   fresh clone on a machine that built before compiles only what changed.
# - Installs what is missing, only when missing (today: the Rust toolchain's own tools; the
#   embedded backends need nothing else).
# - Runs the whole suite (unit, end-to-end, crash, property tests) against real SQLite files
#   and the real `agora` binary, on loopback ports of its own.
set -euo pipefail

cd "$(dirname "$0")/.."
cache="${AGORA_CACHE:-$HOME/.cache/agora}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export CARGO_INCREMENTAL=0
mkdir -p "$CARGO_TARGET_DIR"

step() { printf '\n==> %s\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required: install Rust with rustup (https://rustup.rs)" >&2
  exit 1
fi

step "toolchain: $(cargo --version)"
step "building (target folder: $CARGO_TARGET_DIR)"
cargo build --locked --workspace --all-targets

step "running every test"
cargo test --locked --workspace --no-fail-fast -- --test-threads "${AGORA_TEST_THREADS:-2}"
