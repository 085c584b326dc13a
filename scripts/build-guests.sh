#!/usr/bin/env bash
# Builds the guest components (examples/ and tests/fixtures/) for wasm32-wasip2, release profile.
# Outputs: $CARGO_TARGET_DIR_WASM/wasm32-wasip2/release/*.wasm (default <repo>/target/wasm).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target_dir="${CARGO_TARGET_DIR_WASM:-$repo/target/wasm}"

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi

for workspace in examples tests/fixtures; do
    cargo build --release --locked --target wasm32-wasip2 \
        --manifest-path "$repo/$workspace/Cargo.toml" --target-dir "$target_dir"
done

echo "guests built in $target_dir/wasm32-wasip2/release" >&2
