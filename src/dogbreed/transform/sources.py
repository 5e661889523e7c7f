"""Where a transform job reads and writes: a folder, an ``s3://`` prefix, or a manifest file
(SageMaker's ``ManifestFile``: ``[{"prefix": "s3://b/p/"}, "a.jpg", "sub/b.jpg"]``), and the
output folder or prefix, which receives ``KEY.out`` per input as one whole object each.

An input's key is its path under the source's root (or the manifest's prefix), which is also
where its ``.out`` goes under the output: SageMaker's layout.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dogbreed import remote
from dogbreed.errors import DogbreedError
from dogbreed.files import atomic_write_bytes

OUT_SUFFIX = ".out"
FAILURES = "_failures.jsonl"
S3_PREFIX, MANIFEST = "S3Prefix", "ManifestFile"  # SageMaker's S3DataType
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Input:
    key: str  # the path under the root, "/"-separated: the .out's name too
    location: str  # a local path or an s3:// URL

    def read(self) -> bytes:
        if remote.is_s3(self.location):
            with remote.s3_errors(self.location):
                return remote.filesystem().cat_file(self.location[len(remote.SCHEME):])
        return Path(self.location).read_bytes()

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.key).suffix.lower()


def inputs(source: str, data_type: str | None = None) -> list[Input]:
    """Every input of ``source`` in key order: the files under a folder or prefix (hidden ones,
    named ``.*``, left out), the one file it names, or the files a manifest lists (``data_type``
    ``ManifestFile``, or a ``.manifest`` file)."""
    manifest = data_type == MANIFEST or (data_type is None and source.endswith(".manifest"))
    if manifest:
        return _manifest(source)
    if remote.is_s3(source):
        found = _s3_files(source)
    else:
        root = Path(source)
        if root.is_file():
            found = [Input(root.name, str(root))]
        elif root.is_dir():
            found = [Input(p.relative_to(root).as_posix(), str(p))
                     for p in root.rglob("*") if p.is_file() and not _hidden(p.relative_to(root).as_posix())]
        else:
            raise DogbreedError(f"--input {source} does not exist")
    if not found:
        raise DogbreedError(f"--input {source} holds no files")
    return sorted(found, key=lambda i: i.key)


def _hidden(key: str) -> bool:
    return any(part.startswith(".") for part in key.split("/"))


def _s3_files(url: str) -> list[Input]:
    path = url[len(remote.SCHEME):].rstrip("/")
    fs = remote.filesystem()
    with remote.s3_errors(url):
        if fs.isfile(path):
            return [Input(PurePosixPath(path).name, remote.SCHEME + path)]
        found = fs.find(path)  # files only
    keys = (PurePosixPath(k).relative_to(path).as_posix() for k in found)
    return [Input(key, f"{remote.SCHEME}{path}/{key}") for key in keys if not _hidden(key)]


def _manifest(source: str) -> list[Input]:
    """``[{"prefix": P}, "rel/a.jpg", ...]``: each entry ``P + rel``, keyed ``rel``; an entry
    listed twice is one input (its ``.out`` is one object)."""
    try:
        raw = Input("manifest", source).read()
        doc = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise DogbreedError(f"--input {source}: not a readable manifest ({exc})") from None
    if (not isinstance(doc, list) or not doc or not isinstance(doc[0], dict) or not isinstance(doc[0].get("prefix"), str)
            or not all(isinstance(k, str) and k for k in doc[1:])):
        raise DogbreedError(f'--input {source}: a manifest is [{{"prefix": "s3://BUCKET/PREFIX/"}}, "a.jpg", ...]')
    prefix = doc[0]["prefix"]
    if not remote.is_s3(prefix) and not os.path.isabs(prefix):  # a local prefix is read from the manifest's folder
        prefix = str(Path(source).parent / prefix) if not remote.is_s3(source) else prefix
    base = prefix if prefix.endswith("/") else prefix + "/"
    found: dict[str, Input] = {}
    for key in doc[1:]:
        if key.startswith("/") or ".." in PurePosixPath(key).parts:
            raise DogbreedError(f"--input {source}: entry {key!r} leaves the prefix; give paths under it")
        found[key] = Input(key, base + key)
    if len(found) < len(doc) - 1:
        log.warning("--input %s lists %d entr(ies) more than once: each is scored once", source, len(doc) - 1 - len(found))
    return sorted(found.values(), key=lambda i: i.key)


def shard(items: list[Input], which: tuple[int, int] | None) -> list[Input]:
    """The inputs of shard K of N (1-based): each key goes to one shard by a hash of its name, so
    N copies of the job on N machines split the inputs without talking to each other, whatever
    order each lists them in (as SageMaker's ShardedByS3Key splits objects across instances)."""
    if which is None:
        return items
    k, n = which
    return [i for i in items if zlib.crc32(i.key.encode()) % n == k - 1]


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/3"`` -> (2, 3); anything else is one line."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        k = n = 0
    if not 1 <= k <= n:
        raise DogbreedError(f"--shard {text!r} must be K/N with 1 <= K <= N, e.g. 1/3")
    return k, n


class Output:
    """The output folder or ``s3://`` prefix. :meth:`write` makes an object whole or not at all
    (a local file is written beside and renamed; an S3 object appears whole when its upload ends),
    so an ``.out`` that exists is complete: what a rerun skips."""

    def __init__(self, dest: str):
        self.dest = dest.rstrip("/") if remote.is_s3(dest) else dest
        if remote.is_s3(dest):
            remote.check_writable(dest)
        else:
            try:
                Path(dest).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DogbreedError(f"--output {dest}: cannot make the folder ({exc.strerror})") from None

    def url(self, name: str) -> str:
        return remote.join(self.dest, name)

    def done(self) -> set[str]:
        """The names of every complete ``.out`` already there."""
        if remote.is_s3(self.dest):
            root = self.dest[len(remote.SCHEME):]
            with remote.s3_errors(self.dest):
                found = remote.filesystem().find(root)
            return {PurePosixPath(k).relative_to(root).as_posix() for k in found if k.endswith(OUT_SUFFIX)}
        root = Path(self.dest)
        return {p.relative_to(root).as_posix() for p in root.rglob(f"*{OUT_SUFFIX}") if p.is_file()}

    def exists(self, name: str) -> bool:
        if remote.is_s3(self.dest):
            url = self.url(name)
            with remote.s3_errors(url):
                return remote.filesystem().exists(url[len(remote.SCHEME):])
        return (Path(self.dest) / name).is_file()

    def write(self, name: str, data: bytes) -> None:
        if remote.is_s3(self.dest):
            url = self.url(name)
            with remote.s3_errors(url):
                remote.filesystem().pipe_file(url[len(remote.SCHEME):], data)
            return
        path = Path(self.dest) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)

    def remove(self, name: str) -> None:
        if remote.is_s3(self.dest):
            fs, path = remote.filesystem(), self.url(name)[len(remote.SCHEME):]
            with remote.s3_errors(self.dest):
                if fs.exists(path):
                    fs.rm_file(path)
        else:
            (Path(self.dest) / name).unlink(missing_ok=True)
