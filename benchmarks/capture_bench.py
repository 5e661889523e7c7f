"""What data capture costs the server: throughput at concurrency 16 with ``--capture`` on (100% of
requests, input and output) against off, alternating on/off then off/on over ``--rounds`` rounds so
that a drifting machine hits both alike, on the sample photos (real JPEGs of varied size, each captured base64).

Two networks with random weights (speed does not depend on their values): the default resnet50,
and a resnet18, whose faster answers make capture's share of each request larger.

    python benchmarks/capture_bench.py [--requests 192] [--rounds 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import REPO, free_port, load, wait_ready  # noqa: E402

from dogbreed import machine  # noqa: E402


def make_artifact(folder: Path, backbone: str) -> Path:
    from dogbreed.artifact import model_meta, write_artifact
    from dogbreed.data.layout import Labels
    from dogbreed.model import build_model, eval_preset

    labels = Labels([f"{i + 1:03d}.Breed_{i + 1:03d}" for i in range(133)])
    torch.manual_seed(0)
    model, _ = build_model(backbone, 133, pretrained=False)
    meta = model_meta(backbone, labels, eval_preset(backbone))
    return write_artifact(folder / f"{backbone}.tar.gz", model.eval(), labels, meta)


def served_rps(artifact: Path, photos: list[Path], requests: int, capture: Path | None) -> tuple[float, dict]:
    port = free_port()
    flags = ["--capture", str(capture)] if capture else []
    proc = subprocess.Popen([sys.executable, "-m", "dogbreed", "serve", "--model", str(artifact), "--port", str(port),
                             "--backend", "eager", *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{port}/ping", proc)
        load(port, "/invocations", 4, 16, photos)  # warm-up
        result = load(port, "/invocations", 16, requests, photos)
        counts = {}
        if capture:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                for line in r.read().decode().splitlines():
                    if line.startswith("dogbreed_capture_records_total{"):
                        counts[line.split('"')[1]] = float(line.split()[-1])
        assert not result["errors"], result
        return result["rps"], counts
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=192, help="requests per measurement, at concurrency 16")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--photos", default=str(REPO.parent / "shared" / "samples" / "photos"))
    p.add_argument("--backbones", nargs="+", default=["resnet50", "resnet18"])
    args = p.parse_args()
    photos = sorted(Path(args.photos).glob("*.jpg"))
    print(f"# {machine.describe()}; torch {torch.__version__}; {len(photos)} photos, "
          f"{sum(f.stat().st_size for f in photos) / len(photos) / 1024:.0f} KB on average")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for backbone in args.backbones:
            artifact = make_artifact(tmp, backbone)
            rps = {"off": [], "on": []}
            for r in range(args.rounds):
                for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):  # ABBA: a drifting machine hits both alike
                    capture = tmp / f"capture-{backbone}-{r}" if mode == "on" else None
                    rate, counts = served_rps(artifact, photos, args.requests, capture)
                    rps[mode].append(rate)
                    assert not capture or counts.get("captured", 0) >= args.requests, counts  # warm-up is captured too
            off_mean, on_mean = (sum(v) / len(v) for v in (rps["off"], rps["on"]))
            print(json.dumps({"backbone": backbone, "rps": {k: [round(x, 1) for x in v] for k, v in rps.items()},
                              "on_vs_off": round(on_mean / off_mean, 3)}))
            time.sleep(1)


if __name__ == "__main__":
    main()
