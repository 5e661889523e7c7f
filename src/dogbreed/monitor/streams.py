"""The profile folder of a run and how it is read back, whole or from a run killed mid-write.

    runs/<run>/profile/
      meta.json        run, hardware, settings, loaders, status (rewritten atomically)
      system.jsonl     one system sample per interval
      steps.jsonl      one record per step: phase, epoch, step, data-wait and compute seconds
      tensors.jsonl    debugger tensors at the debug interval (the file the rules read)
      events.jsonl     phases, epochs, rule triggers, stops
      tensorboard/     the same tensors as TensorBoard scalars and histograms
      trace/           torch.profiler Chrome trace and cProfile of a window of steps
      rules/<Rule>.json  report.html  timeline.png
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from dogbreed.errors import DogbreedError
from dogbreed.files import atomic_write_text

log = logging.getLogger(__name__)

PROFILE_DIR = "profile"
STREAMS = ("system", "steps", "tensors", "events")
# The fields every record of a stream is written with; the rules and the report rely on them.
REQUIRED = {
    "system": ("t", "cpu", "cores", "iowait", "mem_used", "mem_percent", "rss", "proc_cpu"),
    "steps": ("t", "phase", "epoch", "step", "data", "compute"),
    "tensors": ("t", "step", "epoch", "loss"),
    "events": ("t", "event"),
}


def _finite(value):
    """JSON has no NaN or infinity: they are written as the strings "nan", "inf", "-inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


class JsonlWriter:
    """Appends records as JSON lines; a killed process leaves at most one partial last line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "a", encoding="utf-8")

    def write(self, records) -> None:
        for record in records:
            self._file.write(json.dumps(_finite(record), separators=(",", ":"), allow_nan=False) + "\n")

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_jsonl(path: Path, required: tuple[str, ...] = ()) -> tuple[list[dict], int]:
    """The records of ``path`` and how many lines were skipped: a partial last line, or a record
    that is not an object with the ``required`` fields and a numeric time."""
    records, bad = [], 0
    if not path.exists():
        return records, bad
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(record, dict) and all(k in record for k in required) and (
                    "t" not in required or isinstance(record["t"], (int, float))):
                records.append(record)
            else:
                bad += 1
    return records, bad


def write_meta(folder: Path, meta: dict) -> None:
    atomic_write_text(folder / "meta.json", json.dumps(_finite(meta), indent=1))


def read_meta(folder: Path) -> dict | None:
    """The run's meta.json, or None when it is missing or unreadable."""
    try:
        return json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


@dataclass
class Profile:
    """Everything a monitored run recorded, as lists of records sorted by time."""

    folder: Path
    meta: dict
    system: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    tensors: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    damaged_lines: int = 0

    @property
    def finished(self) -> bool:
        return self.meta.get("status") in ("completed", "stopped")

    def stream(self, name: str) -> list[dict]:
        return getattr(self, name)

    @property
    def last_time(self) -> float | None:
        """When the last record of any stream was written (where a killed run stopped)."""
        return max((records[-1]["t"] for records in map(self.stream, STREAMS) if records), default=None)


def load_profile(run_dir: str | os.PathLike) -> Profile:
    run_dir = Path(run_dir)
    folder = run_dir if run_dir.name == PROFILE_DIR else run_dir / PROFILE_DIR
    if not run_dir.is_dir():
        what = "is a file, not a folder" if run_dir.exists() else "does not exist"
        raise DogbreedError(f"run folder {run_dir} {what}; pass a folder that `dogbreed train` created under runs/")
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise DogbreedError(
            f"{run_dir} has no profile data ({folder}/meta.json is missing); train with profiling on "
            f"(`dogbreed train --profile ...`, the default) to collect it"
        )
    meta = read_meta(folder)
    if meta is None:
        raise DogbreedError(f"{meta_path} is unreadable; the profile cannot be reported")
    profile = Profile(folder, meta)
    for name in STREAMS:
        records, bad = read_jsonl(folder / f"{name}.jsonl", REQUIRED[name])
        records.sort(key=lambda r: r["t"])
        setattr(profile, name, records)
        profile.damaged_lines += bad
    if profile.damaged_lines:
        log.warning("%s: skipped %d partial or damaged line(s) (a run killed mid-write leaves a partial last one)",
                    folder, profile.damaged_lines)
    return profile
