#!/usr/bin/env bash
# Builds the guest components (examples/ and tests/fixtures/) for wasm32-wasip2, release profile.
# Outputs: $CARGO_TARGET_DIR_WASM/wasm32-wasip2/release/*.wasm (default <repo>/target/wasm).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target_dir="${CARGO_TARGET_DIR_WASM:-$repo/target/wasm}"

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi

manifests=("$repo/examples/Cargo.toml" "$repo/tests/fixtures/Cargo.toml")
# Examples with heavier dependencies are their own workspaces (their own Cargo.lock).
for manifest in "$repo"/examples/*/Cargo.toml; do
    if grep -q '^\[workspace\]' "$manifest"; then
        manifests+=("$manifest")
    fi
done
for manifest in "${manifests[@]}"; do
    cargo build --release --locked --target wasm32-wasip2 \
        --manifest-path "$manifest" --target-dir "$target_dir"
done

echo "guests built in $target_dir/wasm32-wasip2/release" >&2
