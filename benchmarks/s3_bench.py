"""Reading the data set from S3 against local disk: images per second of a first epoch's reading
and of every one after, with no network in between (a moto S3 server on loopback).

- local disk: one decoding pass over the train split (``ImageDataset`` through a DataLoader, as
  an epoch reads it; no network, so the figures are about reading);
- S3, first epoch: staging the data set (listing, fetching every object into the local mirror)
  and the same decoding pass over the mirror;
- S3, after: staging again (listing only: every ETag and size matches) and the decoding pass.

    python benchmarks/s3_bench.py [--classes 10 --per-class 40 --size 224 --workers 2]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from dogbreed import machine, remote
from dogbreed.data.layout import IMAGE_EXTS, scan
from dogbreed.data.loaders import ImageDataset, image_loader
from dogbreed.data.synth import synth
from dogbreed.model import eval_preset


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_pass(root: Path, size: int, workers: int) -> tuple[float, int]:
    """Seconds to decode and transform every train image once, and how many."""
    layout = scan(root)
    preset = eval_preset("resnet50", size)
    loader = image_loader(ImageDataset(layout.splits["train"], preset, min_side=preset.resize_size), 32, shuffle=True,
                          workers=workers, device=torch.device("cpu"), persistent=False)
    started, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch[1])
    return time.perf_counter() - started, n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--per-class", type=int, default=40)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--workers", type=int, default=machine.available_cpus())
    args = p.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="dogbreed-s3-bench-") as tmp:
        tmp = Path(tmp)
        env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
               "AWS_EC2_METADATA_DISABLED": "true", "DOGBREED_CACHE": str(tmp / "cache")}
        os.environ.update(env)
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            data = synth(tmp / "data", classes=args.classes, per_class=args.per_class, size=args.size, progress=False)
            fs = remote.filesystem()
            deadline = time.monotonic() + 60
            while True:
                try:
                    fs.ls("")
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.3)
            fs.mkdir("bench")
            fs.put(str(data), "bench/set", recursive=True)
            url = "s3://bench/set/"
            megabytes = sum(f.stat().st_size for f in data.rglob("*.jpg")) / 1e6
            objects = len(list(data.rglob("*.jpg")))

            local = read_pass(data, args.size, args.workers)
            started = time.perf_counter()
            mirror = remote.stage(url, IMAGE_EXTS).root
            fetch = time.perf_counter() - started
            first = read_pass(mirror, args.size, args.workers)
            started = time.perf_counter()
            remote.stage(url, IMAGE_EXTS)
            relist = time.perf_counter() - started
            after = read_pass(mirror, args.size, args.workers)
        finally:
            server.terminate()
            server.wait(timeout=30)

    n = local[1]
    print(f"\n## s3_bench: {objects} JPEGs ({megabytes:.1f} MB), {args.size} px, {args.workers} decoding workers, "
          f"a moto S3 server on loopback ({machine.describe()}, torch {torch.__version__})\n")
    print("| read | staging | decoding pass (train split) | train img/s |\n|---|---|---|---|")
    print(f"| local disk | - | {local[0]:.2f} s, {n} images | {n / local[0]:.1f} |")
    print(f"| S3, first epoch | {fetch:.2f} s: {objects} objects fetched ({objects / fetch:.0f} objects/s, "
          f"{megabytes / fetch:.1f} MB/s) | {first[0]:.2f} s | {n / (fetch * n / objects + first[0]):.1f} |")
    print(f"| S3, every epoch after (and a new run) | {relist:.2f} s: listing, nothing fetched | {after[0]:.2f} s | "
          f"{n / after[0]:.1f} |")
    print("\nfirst epoch's img/s counts the train split's part of the fetch (train images / all objects).")
    print(f"\ncommand: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
