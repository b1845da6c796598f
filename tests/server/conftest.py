"""Fixtures: the real qwgpu-server binary on loopback, with the embedded default model and with
the scripted checkpoint (see make_scripted_model.py). Each server is stopped with SIGTERM at the
end and must exit 0 (graceful shutdown)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))


def server_binary():
    path = os.environ.get("QWGPU_SERVER_BIN", os.path.join(ROOT, "target", "debug", "qwgpu-server"))
    if not os.path.exists(path):
        pytest.exit(f"{path} does not exist: build it with `cargo build -p server` (or set QWGPU_SERVER_BIN)", returncode=2)
    return path


class Server:
    def __init__(self, args, name):
        env = dict(os.environ)
        env.setdefault("XDG_RUNTIME_DIR", "/tmp")
        self.proc = subprocess.Popen(
            [server_binary(), "--port", "0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=sys.stderr,
            text=True,
            env=env,
        )
        self.url = None
        deadline = time.time() + 300
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the {name} server exited with {self.proc.wait()}")
            if line.startswith("listening on "):
                self.url = line.split("listening on ", 1)[1].strip()
                break
        if not self.url:
            self.proc.kill()
            raise RuntimeError(f"the {name} server did not start")
        # Keep draining stdout so the server never blocks on it.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        self.base_url = self.url + "/v1"
        self.model = json.load(urllib.request.urlopen(self.base_url + "/models"))["data"][0]["id"]

    def get(self, path):
        with urllib.request.urlopen(self.url + path) as r:
            return r.read().decode()

    def metric(self, series):
        for line in self.get("/metrics").splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
        return 0.0

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None


@pytest.fixture(scope="session")
def default_server():
    s = Server(["--max-context", "512"], "default-model")
    yield s
    assert s.stop() == 0, "qwgpu-server should exit 0 on SIGTERM"


@pytest.fixture(scope="session")
def scripted_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("scripted")
    subprocess.run([sys.executable, os.path.join(HERE, "make_scripted_model.py"), "--out", str(out)], check=True)
    return out


@pytest.fixture(scope="session")
def scripted(scripted_dir):
    with open(os.path.join(scripted_dir, "script.json")) as f:
        return json.load(f)


@pytest.fixture(scope="session")
def scripted_server(scripted_dir):
    # Plain greedy decoding: the checkpoint's MTP head is random, so drafts would only be rejected.
    s = Server(["--model", str(scripted_dir), "--model-name", "scripted", "--mtp", "off"], "scripted")
    yield s
    assert s.stop() == 0, "qwgpu-server should exit 0 on SIGTERM"
