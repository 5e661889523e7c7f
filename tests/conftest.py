"""Shared fixtures: tiny synthetic data sets, small random-weight models, real sample photos."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "samples" / "photos"

# The most the suite holds in the temporary folder at once (1.5 GB measured, with each passing test's
# folder removed as it ends): below that, a run fails everywhere at once on a full disk.
NEEDS_FREE_GB = 3


def pytest_sessionstart(session):
    free = shutil.disk_usage(tempfile.gettempdir()).free / 1e9
    if free < NEEDS_FREE_GB:
        pytest.exit(f"only {free:.1f} GB free in {tempfile.gettempdir()}; the tests need about {NEEDS_FREE_GB} GB there "
                    f"(old runs: /tmp/pytest-of-*)", returncode=1)


# Small and fast everywhere: 64 px images, resnet18, no worker processes unless a test asks.
TINY = {"backbone": "resnet18", "pretrained": False, "image_size": 64, "workers": 0, "batch_size": 8}


@pytest.fixture(autouse=True, scope="session")
def _isolated_caches(tmp_path_factory):
    """Embedding cache and torch hub in temporary folders; nothing reaches the network."""
    os.environ["DOGBREED_CACHE"] = str(tmp_path_factory.mktemp("feature-cache"))
    os.environ["TORCH_HOME"] = str(tmp_path_factory.mktemp("torch-home"))
    os.environ["TQDM_DISABLE"] = "1"
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """4 classes x 16 images (12 train / 2 valid / 2 test each) at 64 px."""
    from dogbreed.data.synth import synth

    return synth(tmp_path_factory.mktemp("synth") / "data", classes=4, per_class=16, size=64, seed=1, progress=False)


@pytest.fixture
def data_copy(synth_data, tmp_path) -> Path:
    """A private copy of the synthetic data set that a test may damage."""
    import shutil

    return Path(shutil.copytree(synth_data, tmp_path / "data"))


@pytest.fixture(scope="session")
def tiny_weights(synth_data, tmp_path_factory) -> Path:
    """A resnet18 state dict trained briefly on the synthetic data: stands in for ImageNet weights,
    so frozen-backbone tests have features worth training a head on."""
    from dogbreed import config
    from dogbreed.run import train

    out = tmp_path_factory.mktemp("pretrain")
    cfg = config.resolve(overrides={**TINY, "data": str(synth_data), "out": str(out), "train_layers": "all",
                                    "epochs": 6, "lr": 0.003, "name": "pretrain"})
    result = train(cfg, progress=False)
    state = torch.load(result.run_dir / "checkpoints" / "best.pt", weights_only=True)["model"]
    path = out / "resnet18-tiny.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="session")
def trained_run(synth_data, tiny_weights, tmp_path_factory):
    """A finished fast-path (frozen backbone, cached embeddings) run with its artifact."""
    from dogbreed import config
    from dogbreed.run import train

    cfg = config.resolve(overrides={**TINY, "data": str(synth_data), "weights": str(tiny_weights),
                                    "out": str(tmp_path_factory.mktemp("runs")), "epochs": 4, "name": "fast"})
    return train(cfg, progress=False)


@pytest.fixture
def samples() -> Path:
    if not SAMPLES.is_dir():
        pytest.skip(f"sample photos not found at {SAMPLES}")
    return SAMPLES


def cache_use(run_dir: Path) -> dict:
    """What a run's embedding cache did, from its results.json: hits, computed and ranks."""
    stats = json.loads((run_dir / "results.json").read_text())["feature_cache"]
    return {key: stats[key] for key in ("hits", "computed", "ranks")}


def free_port() -> int:
    """A loopback port nobody listens on (free to bind, or to prove a connection is refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, timeout: float, *, proc: subprocess.Popen | None = None, why=lambda: "") -> None:
    """Return once GET ``url`` answers 200; raise RuntimeError, with ``why()`` (the process's
    output, say), where ``proc`` exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process serving {url} exited: {why()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout:.0f} s: {why()}")
        time.sleep(0.2)


def run_cli(*args: str, env: dict | None = None, cwd: str | Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``dogbreed ARGS`` as a real process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "dogbreed", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout)


def wait_for_line(proc: subprocess.Popen, prefix: str, timeout: float = 300) -> bool:
    """Read ``proc``'s stdout until a line starts with ``prefix`` (True) or it ends (False); a
    process that neither prints it nor ends within ``timeout`` seconds is killed, which ends the read."""
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    try:
        return any(line.startswith(prefix) for line in proc.stdout)
    finally:
        killer.cancel()


def blamed(line: str) -> int | None:
    """The rank a watchdog's verdict ends the job for (its line, with or without ``error: ``), or
    None. A frozen rank has more than one right verdict ("stopped answering", or "made no progress"
    when its last beat landed just inside the bound, as under load): tests assert whom it names and
    that it was said, not which words a race picked."""
    words = line.removeprefix("error: ").split()
    return int(words[1]) if len(words) > 1 and words[0] == "rank" and words[1].isdigit() else None


def one_line_error(proc, *fragments):
    """A CLI process that exited 1 with exactly one line on stderr, an error holding each fragment."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path):
    """Debian's headless Chromium through its chromedriver (selenium)."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        message = "Debian's chromium and chromium-driver are not installed (make test installs them as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=900,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
