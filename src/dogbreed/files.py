"""Writing files that matter without ever leaving a half-written one behind."""

from __future__ import annotations

import fcntl
import os
import uuid
from contextlib import contextmanager
from pathlib import Path

import yaml

from dogbreed.errors import DogbreedError


def make_folder(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a folder, made with its parents if missing; a file in the way is one line naming
    ``what`` ("--out", say) instead of ``File exists``."""
    path = Path(path)
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                raise DogbreedError(f"{what} {path}: {part} is a file, not a folder; pass a folder")
            break
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def file_lock(path: str | os.PathLike):
    """An exclusive advisory lock on ``path`` held for the block (released if the process dies)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name, created by the writer: the file gets the usual permissions (umask), not 0600.
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    import torch  # here, not at the top: tuning's storage layer (which locks files) runs without torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def read_yaml(path: str | os.PathLike, what: str, name: str | os.PathLike | None = None):
    """The YAML document in ``path``; a missing or malformed file is one line naming it (``what``:
    "config file", "space file", "rules file"; ``name``: as the user gave it, if not ``path``)."""
    name = name or path
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DogbreedError(f"{what} {name} does not exist") from None
    except yaml.YAMLError as exc:
        raise DogbreedError(f"{what} {name} is not valid YAML ({str(exc).splitlines()[0]})") from None


def default_cache_dir() -> Path:
    """Where dogbreed keeps what it can recompute: embeddings, exported backbones, S3 mirrors."""
    return Path(os.environ.get("DOGBREED_CACHE") or Path.home() / ".cache" / "dogbreed")
