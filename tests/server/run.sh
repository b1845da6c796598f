#!/usr/bin/env bash
# qwgpu-server against real clients: the official `openai` Python client (pytest, with the
# embedded default model and a scripted checkpoint built by make_scripted_model.py) and the chat
# UI in headless Chromium (node --test with playwright-core). The raw-HTTP, concurrency,
# disconnect and shutdown tests are Rust (`cargo test -p server`).
#
# Needs: python3 with venv, node + npm, Chromium (CHROMIUM, default /usr/bin/chromium), a Vulkan
# driver (lavapipe is enough). QWGPU_SERVER_VENV picks the virtualenv (default
# /tmp/qwgpu-server-venv); QWGPU_SERVER_BIN a prebuilt server.
set -euo pipefail
cd "$(dirname "$0")/../.."

export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/xdg-runtime}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"

if [ -z "${QWGPU_SERVER_BIN:-}" ]; then
  cargo build -p server
  export QWGPU_SERVER_BIN="$PWD/target/debug/qwgpu-server"
fi

VENV="${QWGPU_SERVER_VENV:-/tmp/qwgpu-server-venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q -r tests/server/requirements.txt
"$VENV/bin/python" -m pytest -p no:cacheprovider -v --durations=5 tests/server

# A hung browser or server fails the run after 15 minutes instead of holding it.
(cd tests/server && npm ci --no-audit --no-fund --loglevel=error && timeout 900 node --test ui.test.mjs)
