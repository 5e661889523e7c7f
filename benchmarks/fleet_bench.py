"""A tuning fleet on one PostgreSQL study: the connections N ``dogbreed tune`` workers hold.

N worker processes (each ``dogbreed tune --parallel 1`` on the same ``--storage`` and ``--study``,
as on N machines) tune a small resnet18 on synthetic data while this script polls
``pg_stat_activity`` every 50 ms: the most connections each worker held at once, and all of them
together. Every worker names itself ``dogbreed tune <pid>`` to the server.

    python benchmarks/fleet_bench.py --storage postgresql://USER@127.0.0.1:PORT/DB [--workers 8]
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

from dogbreed import machine
from dogbreed.data.synth import synth
from dogbreed.tune.study import APPLICATION_NAME, CONNECTIONS_PER_PROCESS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--storage", required=True, help="a PostgreSQL URL the workers share")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--trials", type=int, default=16)
    args = p.parse_args()

    peak: collections.Counter = collections.Counter()
    total, stop = [0], threading.Event()

    def watch() -> None:
        with psycopg.connect(args.storage, autocommit=True) as conn:
            while not stop.wait(0.05):
                rows = conn.execute("SELECT application_name, count(*) FROM pg_stat_activity WHERE application_name "
                                    "LIKE %s GROUP BY application_name", (f"{APPLICATION_NAME} %",)).fetchall()
                for name, n in rows:
                    peak[name] = max(peak[name], n)
                total[0] = max(total[0], sum(n for _, n in rows))

    with tempfile.TemporaryDirectory(prefix="dogbreed-fleet-") as tmp:
        data = synth(Path(tmp) / "data", classes=4, per_class=20, size=64, progress=False)
        study = f"fleet-{os.getpid()}"
        cmd = [sys.executable, "-m", "dogbreed", "tune", "--data", str(data), "--out", str(Path(tmp) / "runs"),
               "--storage", args.storage, "--study", study, "--trials", str(args.trials), "--parallel", "1",
               "--backbone", "resnet18", "--no-pretrained", "--image-size", "64", "--workers", "0", "--no-final",
               "--no-progress", "--no-profile"]
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        started = time.perf_counter()
        procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for _ in range(args.workers)]
        errors = [proc.communicate(timeout=1800)[1] for proc in procs]
        seconds = time.perf_counter() - started
        stop.set()
        watcher.join(timeout=10)
    failed = [err.strip().splitlines()[-1] for proc, err in zip(procs, errors) if proc.returncode != 0]

    print(f"\n## fleet_bench: {args.workers} tuning workers, {args.trials} trials, one PostgreSQL study "
          f"({machine.describe()})\n")
    print("| measure | value |\n|---|---|")
    print(f"| workers seen holding connections | {len(peak)} of {args.workers} |")
    print(f"| most connections one worker held at once | {max(peak.values(), default=0)} "
          f"(bound: {CONNECTIONS_PER_PROCESS}) |")
    print(f"| most connections all workers held at once | {total[0]} (bound: {args.workers * CONNECTIONS_PER_PROCESS}) |")
    print(f"| wall time | {seconds:.0f} s |")
    print(f"| workers that failed | {len(failed)}{': ' + '; '.join(failed) if failed else ''} |")
    print(f"\ncommand: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
