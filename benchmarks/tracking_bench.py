"""What MLflow tracking costs a training: the default path (a frozen backbone's head trained on
cached embeddings, 9 epochs, the cache warm, so that the training itself is short and any cost of
tracking shows) with tracking off, to a local SQLite store (``--track``) and to a tracking server
on loopback (``mlflow server``, artifacts served by it), in rotating order, each run in its own
process as the command runs. Timed: the wall of ``train()`` (the process's start is the same for
all three), uploads included (the run's end waits for them).

    python benchmarks/tracking_bench.py                     # resnet50, 224 px, 10 classes x 40 images
    python benchmarks/tracking_bench.py --rounds 5 --backbone resnet18
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

from dogbreed import machine
from dogbreed.data.synth import synth

RUN = """
import json, sys, time
from dogbreed import config, machine
from dogbreed.run import train
machine.keep_freed_memory()
started = time.perf_counter()
result = train(config.resolve(overrides=json.loads(sys.argv[1])), progress=False)
print(json.dumps({"seconds": time.perf_counter() - started, "accuracy": result.test["test_accuracy"]}))
"""


def timed(overrides: dict) -> float:
    out = subprocess.run([sys.executable, "-c", RUN, json.dumps(overrides)], capture_output=True, text=True,
                         env={**os.environ, "TQDM_DISABLE": "1"}, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def server(folder: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port",
                             str(port), "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'store.db'}",
                             "--artifacts-destination", str(folder / "artifacts")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit("mlflow server did not start")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--port", type=int, default=5077)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="dogbreed-bench-") as tmp:
        tmp = Path(tmp)
        data = synth(tmp / "data", classes=10, per_class=40, size=args.size, progress=False)
        common = {"data": str(data), "backbone": args.backbone, "pretrained": False, "image_size": args.size,
                  "epochs": 9, "cache_dir": str(tmp / "cache"), "out": str(tmp / "runs")}
        proc = server(tmp, args.port)  # up before any run is timed
        timed({**common, "name": "warm-up"})  # fills the embedding cache every run below reads
        try:
            ways = {"off": {}, "--track (local SQLite)": {"track": True},
                    "--tracking-uri (a server on loopback)": {"tracking_uri": f"http://127.0.0.1:{args.port}"}}
            times: dict[str, list[float]] = {name: [] for name in ways}
            for i in range(args.rounds):
                order = list(ways)[i % len(ways):] + list(ways)[:i % len(ways)]
                for name in order:
                    times[name].append(timed({**common, **ways[name], "name": f"r{i}-{len(times[name])}-{name[:5]}"}))
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
    off = statistics.median(times["off"])
    print(f"\n## tracking_bench: a 9-epoch training on warm cached embeddings ({args.backbone}, {args.size} px)")
    print(f"machine: {machine.describe()}, torch {torch.__version__}\n")
    print("| tracking | wall, each round | median | against off | added |\n|---|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {', '.join(f'{v:.2f} s' for v in values)} | {median:.2f} s | {median / off:.3f}x | "
              f"{median - off:+.2f} s |")
    print(f"\ncommand: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
