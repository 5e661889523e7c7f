"""Real server processes on free loopback ports."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading

import pytest

from ..conftest import free_port, wait_for_http


@contextlib.contextmanager
def running_server(model, *flags: str, ready_s: float = 120, port: int | None = None, output: list[str] | None = None,
                   env: dict | None = None):
    """``dogbreed serve`` as its own process; yields its base URL once /ping answers 200. What it
    prints is read as it comes (into ``output``, when given), so a chatty server never blocks."""
    port = port or free_port()
    proc = subprocess.Popen([sys.executable, "-m", "dogbreed", "serve", "--model", str(model), "--port", str(port), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})})
    lines = output if output is not None else []
    def read() -> None:
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/ping", ready_s, proc=proc, why=lambda: "".join(lines))
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        reader.join(timeout=10)


@pytest.fixture(scope="session")
def server(trained_run):
    # eager, as the handlers in test_parity run: the bf16 a run's end checked answers alike only within its gate
    with running_server(trained_run.artifact, "--max-body-mb", "1", "--max-pixels", "1000000", "--max-instances", "4",
                        "--max-delay-ms", "20", "--backend", "eager") as url:
        yield url
