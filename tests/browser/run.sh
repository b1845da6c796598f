#!/usr/bin/env bash
# The browser test, from a clean checkout: builds the web module and the demo (web/build.sh), the
# native CLI (the reference), installs playwright-core (npm ci), then runs run.mjs, which serves
# web/dist and the fixture models over a local HTTP server, drives headless Chromium on
# SwiftShader's WebGPU and exits non-zero on any token mismatch or when the wasm is over budget.
# The screenshot lands in tests/artifacts/browser-demo.png.
#
# Needs: the wasm32 target, chromium (CHROMIUM, default /usr/bin/chromium), node >= 18 and npm, a
# Vulkan driver for the native side (lavapipe on CPU-only machines). Arguments go to run.mjs
# (--fixtures a,b  --max-tokens N  --other-tokens N  --chat-tokens N  --headed).
set -euo pipefail
cd "$(dirname "$0")/../.."

export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/xdg-runtime}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"

bash web/build.sh
# QWGPU_BIN: a qwgpu binary already built (CI passes the one `cargo test --workspace` built, so the
# CLI is not compiled a second time with another feature set); otherwise the debug build here.
if [ -z "${QWGPU_BIN:-}" ]; then
  cargo build -p native-cli
  QWGPU_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/qwgpu"
fi
[ -x "$QWGPU_BIN" ] || { echo "tests/browser/run.sh: no qwgpu binary at $QWGPU_BIN" >&2; exit 1; }
export QWGPU_BIN
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
node tests/browser/run.mjs "$@"
