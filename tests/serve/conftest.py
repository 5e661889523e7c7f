"""Real server processes on free loopback ports."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from ..conftest import free_port


@contextlib.contextmanager
def running_server(model, *flags: str, ready_s: float = 120, port: int | None = None):
    """``dogbreed serve`` as its own process; yields its base URL once /ping answers 200."""
    port = port or free_port()
    proc = subprocess.Popen([sys.executable, "-m", "dogbreed", "serve", "--model", str(model), "--port", str(port), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_s
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stdout.read()}")
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become ready")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def server(trained_run):
    with running_server(trained_run.artifact, "--max-body-mb", "1", "--max-pixels", "1000000", "--max-instances", "4",
                        "--max-delay-ms", "20") as url:
        yield url
