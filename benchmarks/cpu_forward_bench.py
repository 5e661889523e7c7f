"""The frozen network's forward pass on the CPU, each way dogbreed could run it, side by side.

For each backbone and precision (fp32, and bf16 where the CPU runs it natively), images per second
at one batch size of:

- plain: the network as trained (under bf16 autocast for bf16);
- folded: BatchNorms folded into their convolutions (``runtime.fusion.fold_batchnorms``);
- fused: folded, and each convolution one oneDNN call with its activation and residual sum
  (``runtime.fusion.ForCpu``), what the embedding and serving run;

each in a child process with glibc's allocator as it comes and with freed memory kept
(``machine.keep_freed_memory``, what every command sets), the two alternating ``--rounds`` times.
Random weights: speed does not depend on the weights' values.

    python benchmarks/cpu_forward_bench.py                       # resnet50, batch 16, 224 px
    python benchmarks/cpu_forward_bench.py --backbones resnet18 efficientnet_v2_s --batch 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ONE = """
import json, sys, time, torch, torchvision
from dogbreed import machine
from dogbreed.runtime import backends, fusion
name, batch, passes, keep = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
kept = machine.keep_freed_memory() if keep else False
net = torchvision.models.get_model(name, weights=None).eval().requires_grad_(False)
images = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
dtypes = [torch.float32] + ([torch.bfloat16] if backends.native_bf16(torch.device("cpu")) else [])
out = {"kept": kept}
for dtype in dtypes:
    ways = {"plain": net.to(memory_format=torch.channels_last),
            "folded": fusion.fold_batchnorms(net).to(memory_format=torch.channels_last),
            "fused": fusion.ForCpu(net.to(memory_format=torch.channels_last), dtype)}
    for way, model in ways.items():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            model(images)
            model(images)
            started = time.perf_counter()
            for _ in range(passes):
                model(images)
        out[f"{way} {str(dtype).removeprefix('torch.')}"] = passes * batch / (time.perf_counter() - started)
print(json.dumps(out))
"""


def one(backbone: str, batch: int, passes: int, keep: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", ONE, backbone, str(batch), str(passes), "1" if keep else "0"],
                         capture_output=True, text=True, check=True, env={**os.environ, "DOGBREED_KEEP_FREED_MEMORY": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", nargs="+", default=["resnet50"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--passes", type=int, default=6, help="timed passes, after two untimed")
    p.add_argument("--rounds", type=int, default=2, help="child processes of each allocator setting, alternating")
    args = p.parse_args()

    import torch

    from dogbreed import machine

    print(f"## cpu_forward_bench: batch {args.batch}, 224 px, {args.passes} timed passes, median of {args.rounds} rounds")
    print(f"machine: {machine.describe()}, torch {torch.__version__}\n")
    print("| backbone | way | glibc as it comes, img/s | freed memory kept, img/s | kept / as it comes | vs plain (kept) |")
    print("|---|---|---|---|---|---|")
    for backbone in args.backbones:
        runs = {False: [], True: []}
        for _ in range(args.rounds):
            for keep in (False, True):
                runs[keep].append(one(backbone, args.batch, args.passes, keep))
        if not all(r["kept"] for r in runs[True]):
            print(f"(the allocator setting did not take here: {backbone}'s two columns ran alike)")
        ways = [k for k in runs[True][0] if k != "kept"]
        median = {keep: {way: statistics.median(r[way] for r in rs) for way in ways} for keep, rs in runs.items()}
        for way in ways:
            plain = median[True][f"plain {way.split()[1]}"]
            print(f"| {backbone} | {way} | {median[False][way]:.1f} | {median[True][way]:.1f} | "
                  f"{median[True][way] / median[False][way]:.2f}x | {median[True][way] / plain:.2f}x |")
    print(f"\ncommand: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
