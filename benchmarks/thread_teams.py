"""Why the server keeps torch on one thread: a lone resnet50 forward pass, each case in a fresh interpreter.

- main: on the main thread, the only thread that ever runs torch;
- worker: on a worker thread, the main thread never ran torch (the server's layout);
- worker, main also ran torch: the same, after the main thread ran one parallel operation (a
  224-pixel ``torch.zeros``), so the process holds two OpenMP teams.

Each forward is followed by a 50 ms pause, as a lone request after an idle moment would be.

    python benchmarks/thread_teams.py [--repeats 30]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap

import torch

from dogbreed import machine

CASE = textwrap.dedent('''
    import statistics, sys, time
    from concurrent.futures import ThreadPoolExecutor
    import torch, torchvision
    case, repeats = sys.argv[1], int(sys.argv[2])

    def measure():
        model = torchvision.models.resnet50().eval().to(memory_format=torch.channels_last)
        x = torch.randn(1, 3, 224, 224).contiguous(memory_format=torch.channels_last)
        times = []
        with torch.inference_mode():
            for i in range(repeats + 2):
                start = time.perf_counter()
                model(x)
                if i >= 2:
                    times.append(time.perf_counter() - start)
                time.sleep(0.05)
        return statistics.median(times)

    if case == "main":
        print(measure())
    else:
        if case == "worker-main-too":
            torch.zeros(3, 224, 224)
        print(ThreadPoolExecutor(1).submit(measure).result())
''')

CASES = {"main": "main thread only", "worker": "worker thread, main thread never ran torch",
         "worker-main-too": "worker thread, main thread ran one parallel op"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    print(f"\n## thread_teams: resnet50 batch 1, cpu ({machine.describe()}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} intra-op threads\n")
    print("| forward pass runs on | p50 |\n|---|---|")
    for case, words in CASES.items():
        out = subprocess.run([sys.executable, "-c", CASE, case, str(args.repeats)], capture_output=True, text=True, check=True)
        print(f"| {words} | {1000 * float(out.stdout):.1f} ms |")
    print(f"\ncommand: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
