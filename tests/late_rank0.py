"""Run by tests/test_torchrun.py under ``torchrun``: ``dogbreed ARGS`` (argv[2:]) whose rank 0 starts
only once another rank has finished a trial of the study in the SQLite file argv[1], as a rank 0
on a slower machine, or one that took longer to load its embeddings, would."""

import contextlib
import os
import sqlite3
import sys
import time

if os.environ.get("RANK") == "0":
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:  # read-only: never creates the file before the study does
            with contextlib.closing(sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=5)) as db:
                finished = db.execute("SELECT count(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED', 'FAIL')")
                if finished.fetchone()[0]:
                    break
        except sqlite3.Error:  # no study yet
            pass
        time.sleep(0.2)

from dogbreed.cli import main  # noqa: E402 - rank 0 waits first

sys.exit(main(sys.argv[2:]))
