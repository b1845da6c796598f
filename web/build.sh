#!/usr/bin/env bash
# Builds the browser engine and the demo page into web/dist/:
#   web/dist/index.html, demo.js, demo.css, qwgpu.js, worker.js   (copied from web/demo/)
#   web/dist/pkg/qwgpu_web.js, qwgpu_web_bg.wasm                   (wasm-bindgen --target web)
#   web/dist/models/default/*                                       (copied from models/default/)
# Serve it with any static server, e.g. `python3 -m http.server -d web/dist 8000`.
#
# Needs the wasm32 target (`rustup target add wasm32-unknown-unknown`) and wasm-bindgen-cli of
# the same version as the wasm-bindgen crate in Cargo.lock; it is installed from crates.io with
# `cargo install wasm-bindgen-cli --locked --version <that version>` when missing (set
# QWGPU_WEB_NO_INSTALL=1 to fail instead).
set -euo pipefail
cd "$(dirname "$0")/.."

wb_version=$(awk '$0 == "name = \"wasm-bindgen\"" { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
if [ -z "$wb_version" ]; then
    echo "build.sh: wasm-bindgen is not in Cargo.lock" >&2
    exit 1
fi
have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$wb_version" ]; then
    if [ -n "${QWGPU_WEB_NO_INSTALL:-}" ]; then
        echo "build.sh: wasm-bindgen-cli $wb_version is needed (found '${have:-none}'): cargo install wasm-bindgen-cli --locked --version $wb_version" >&2
        exit 1
    fi
    echo "build.sh: installing wasm-bindgen-cli $wb_version (found '${have:-none}')" >&2
    cargo install wasm-bindgen-cli --locked --version "$wb_version"
fi

# Release build of the web crate. The workspace's release profile keeps line tables (debug = 1)
# for native profiling; the browser module does not need them (wasm-bindgen drops them anyway),
# and is built with one codegen unit and LTO for size.
t0=$(date +%s)
CARGO_PROFILE_RELEASE_DEBUG=0 \
CARGO_PROFILE_RELEASE_LTO="${QWGPU_WEB_LTO:-true}" \
CARGO_PROFILE_RELEASE_CODEGEN_UNITS="${QWGPU_WEB_CGU:-1}" \
CARGO_PROFILE_RELEASE_OPT_LEVEL="${QWGPU_WEB_OPT:-3}" \
    cargo build --release --target wasm32-unknown-unknown -p web
t1=$(date +%s)
wasm=target/wasm32-unknown-unknown/release/qwgpu_web.wasm
if [ -n "${CARGO_TARGET_DIR:-}" ]; then wasm="$CARGO_TARGET_DIR/wasm32-unknown-unknown/release/qwgpu_web.wasm"; fi

out=web/dist
rm -rf "$out"
mkdir -p "$out/pkg" "$out/models/default"
wasm-bindgen --target web --no-typescript --out-dir "$out/pkg" "$wasm"
cp web/demo/* "$out/"
cp models/default/* "$out/models/default/"
t2=$(date +%s)

raw=$(stat -c %s "$out/pkg/qwgpu_web_bg.wasm")
gz=$(gzip -9 -c "$out/pkg/qwgpu_web_bg.wasm" | wc -c)
echo "build.sh: cargo build $((t1 - t0)) s, wasm-bindgen + copy $((t2 - t1)) s"
echo "build.sh: $out/pkg/qwgpu_web_bg.wasm: $raw bytes raw, $gz bytes gzip -9"
