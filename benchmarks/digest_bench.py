"""What a run's end pays for its test split's digest (``layout.split_digest``, which ``register
--promote`` matches test sets on), on a dogImages-sized split of random files: 836 images of 110 KB
in 133 folders, page cache warm. ``python benchmarks/digest_bench.py [--rounds 5]``."""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from dogbreed.data.layout import split_digest
from dogbreed.machine import describe

FILES, SIZE, BREEDS = 836, 110_000, 133


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="digest-bench-") as root:
        files = []
        for i in range(FILES):
            path = Path(root, "test", f"{i % BREEDS:03d}.breed", f"img_{i}.jpg")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(SIZE))
            files.append(str(path))
        seconds = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            split_digest(files, root)
            seconds.append(time.perf_counter() - start)
    print(describe())
    print(f"split_digest of {FILES} files x {SIZE // 1000} KB ({FILES * SIZE / 1e6:.0f} MB, page cache warm): "
          f"median {statistics.median(seconds):.3f} s, min {min(seconds):.3f} s over {args.rounds}")


if __name__ == "__main__":
    main()
