"""Data sets, images and artifacts on S3, through fsspec + s3fs and AWS's usual configuration (the
credentials chain: environment, ``~/.aws``, an instance role; ``AWS_ENDPOINT_URL`` for an S3 of
one's own). No S3 request is written here by hand.

- ``--data s3://bucket/prefix/``: the data set is staged into a local mirror (as SageMaker's File
  mode copies a channel to the instance), object by object, and only the objects whose ETag or
  size changed are fetched again. Training then reads local files, so the DataLoader's workers never
  touch s3fs (which is not fork-safe), and the embedding cache keys each image by its S3 object
  (bucket/key, ETag, size) rather than by where its copy lies.
- ``predict s3://bucket/key.jpg`` or ``s3://bucket/prefix/``: read object by object.
- ``--model s3://bucket/key.tar.gz`` (any one file to read): staged as one object, fetched again
  only when its ETag or size changed.
- ``--out s3://bucket/prefix/``: the run is written locally as usual, then its artifact and
  results are uploaded to ``s3://bucket/prefix/<run>/``; other commands' results are written in a
  temporary folder (or file) and uploaded once whole.

An ``s3://`` string never goes through ``Path``, which would make it ``s3:/``, a local folder.

Every S3 failure a user can cause (no such bucket or key, no credentials, access denied, no
endpoint) is one line that says what to do.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from dogbreed.errors import DogbreedError
from dogbreed.files import atomic_write_text, default_cache_dir, make_folder
from dogbreed.files import read_yaml as read_local_yaml

log = logging.getLogger(__name__)

SCHEME = "s3://"
MANIFEST = ".dogbreed-s3.json"  # in a staged mirror: relative path -> [ETag, size] of each object fetched
FETCH_CHUNK = 64  # objects fetched concurrently (s3fs runs a chunk's requests at once)
UPLOADED = ("model.tar.gz", "results.json", "metrics.csv", "config.yaml", "labels.json")


@dataclass(frozen=True)
class Staged:
    """A data set ready to read locally: its folder and, for a staged S3 copy, each local file's
    object (``s3://bucket/key|ETag|size``), which keys its embeddings wherever the copy lies."""

    root: Path
    sources: dict[str, str] = field(default_factory=dict)


def is_s3(path) -> bool:
    return isinstance(path, str) and path.startswith(SCHEME)


def filesystem():
    try:
        import s3fs
    except ImportError:
        raise DogbreedError("s3:// paths need s3fs: pip install 'dogbreed[s3]'") from None
    return s3fs.S3FileSystem()


@contextlib.contextmanager
def s3_errors(url: str):
    """S3's failures as one line each, naming ``url``."""
    try:
        yield
    except DogbreedError:
        raise
    except FileNotFoundError as exc:
        # S3's own NoSuchBucket message ("The specified bucket does not exist"), which s3fs turns into
        # a FileNotFoundError as it does a missing key: third-party text, the one thing that tells them apart
        if "bucket does not exist" in str(exc):
            bucket = url[len(SCHEME):].split("/", 1)[0]
            raise DogbreedError(f"S3 bucket {bucket!r} does not exist (in {url}); check the name and the region, "
                                f"or the endpoint (AWS_ENDPOINT_URL)") from None
        raise DogbreedError(f"{url} does not exist on S3; check the key (`aws s3 ls {url}`)") from None
    except PermissionError:
        raise DogbreedError(f"access to {url} was denied; check that these AWS credentials may read (and, for --out, "
                            f"write) it") from None
    except Exception as exc:  # botocore's own errors: no credentials, no endpoint, bad signature, ...
        name = type(exc).__name__
        if name in ("NoCredentialsError", "PartialCredentialsError"):
            raise DogbreedError("no AWS credentials found for S3: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                                "or AWS_PROFILE, or run `aws configure`") from None
        if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "FSTimeoutError") or \
                type(exc).__module__.split(".")[0] == "aiohttp":  # what s3fs raises once its retries are spent
            raise DogbreedError(f"could not reach S3 for {url} ({exc}); check the network or AWS_ENDPOINT_URL") from None
        if type(exc).__module__.split(".")[0] in ("botocore", "aiobotocore", "s3fs"):
            raise DogbreedError(f"S3 refused {url}: {name}: {exc}") from None
        raise


def _split(url: str) -> str:
    """``s3://bucket/prefix/`` -> ``bucket/prefix``, what s3fs takes."""
    path = url[len(SCHEME):].strip("/")
    if not path:
        raise DogbreedError(f"{url} names no bucket; pass s3://BUCKET/PREFIX")
    return path


def mirror_root() -> Path:
    return default_cache_dir() / "s3"


def stage(url: str, suffixes: set[str], *, progress: bool = False, on_chunk: Callable[[], None] | None = None,
          empty: str | None = None) -> Staged:
    """The local mirror of the data set under ``url``, brought up to date: objects new or changed
    (ETag, size) since the last call are fetched, files whose objects are gone are removed. Safe
    for several processes at once (torchrun ranks, tuning workers): one stages, the others wait and
    find it done. Only objects with these file ``suffixes`` (images) are staged; none is one line
    ending with ``empty``, what the prefix should hold (default: a data set). Returns the mirror's
    folder, which has the data set's layout."""
    root = _split(url)
    fs = filesystem()
    with s3_errors(url):
        listing = fs.find(root, detail=True)
    objects = {mirrored_name(key, root, url): info for key, info in listing.items()
               if info.get("type") == "file" and PurePosixPath(key).suffix.lower() in suffixes}
    if not objects:
        if not listing:
            with s3_errors(url):
                fs.ls(root.split("/", 1)[0])  # a missing bucket says so; an empty prefix below
        raise DogbreedError(f"{url} holds no images; " + (empty or f"upload a data set with train/, valid/ and test/ "
                            f"folders of one folder of images per breed (`aws s3 sync dogImages {url}`)"))
    local = mirror_root() / root
    wanted = _sync(fs, url, root, objects, local, "images", progress=progress, on_chunk=on_chunk)
    return Staged(local, {str(local / rel): f"{SCHEME}{root}/{rel}|{etag}|{size}" for rel, (etag, size) in wanted.items()})


def staged_file(path: str | os.PathLike, *, progress: bool = False) -> Path:
    """The file at ``path`` ready to read: a local one as it is, an ``s3://`` object (an artifact,
    a zip) copied into a mirror folder of its own, and fetched again only when its ETag or size
    changed. The copy keeps the object's name."""
    if not is_s3(path):
        return Path(path)
    key = _split(path)
    fs = filesystem()
    with s3_errors(path):
        info = fs.info(key)
    if info.get("type") != "file":
        raise DogbreedError(f"{path} is a prefix, not an object; pass the object's whole key (s3://BUCKET/KEY)")
    if ".." in PurePosixPath(key).parts:
        raise DogbreedError(f"S3 key {key!r} has a '..' part and would be copied outside its mirror; rename that object")
    parent, _, name = key.rpartition("/")
    local = default_cache_dir() / "s3-objects" / key  # not in a data set's mirror, whose staging would drop it
    _sync(fs, path, parent, {name: info}, local, "object", progress=progress)
    return local / name


def _sync(fs, url: str, root: str, objects: dict[str, dict], local: Path, noun: str, *, progress: bool,
          on_chunk: Callable[[], None] | None = None) -> dict[str, list]:
    """``local`` made to hold ``objects`` (relative name under the key ``root`` -> its S3 info):
    what changed is fetched, what is gone removed, under a lock (``noun``: what the log line calls
    them). Returns each name's [ETag, size]."""
    local.mkdir(parents=True, exist_ok=True)
    with open(local / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the next process to stage waits here, then finds nothing to fetch
        manifest_path = local / MANIFEST
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        wanted = {rel: [info.get("ETag", ""), int(info["size"])] for rel, info in objects.items()}
        for rel in set(manifest) - set(wanted):  # deleted upstream
            (local / rel).unlink(missing_ok=True)
            del manifest[rel]
        todo = sorted(rel for rel, tag in wanted.items() if manifest.get(rel) != tag or not (local / rel).is_file())
        if todo:
            log.info("staging %s: fetching %d of %d %s into %s", url, len(todo), len(wanted), noun, local)
        bar = tqdm(total=len(todo), desc="fetching from S3", unit="file", disable=not progress or not todo, leave=False)
        for start in range(0, len(todo), FETCH_CHUNK):
            chunk = todo[start : start + FETCH_CHUNK]
            for rel in chunk:
                manifest.pop(rel, None)  # until its copy is whole, a file is not trusted
                (local / rel).parent.mkdir(parents=True, exist_ok=True)
            with s3_errors(url):
                fs.get([f"{root}/{rel}" for rel in chunk], [str(local / rel) for rel in chunk])
            manifest.update({rel: wanted[rel] for rel in chunk})
            if on_chunk is not None:
                on_chunk()
            atomic_write_text(manifest_path, json.dumps(manifest))
            bar.update(len(chunk))
        bar.close()
        atomic_write_text(manifest_path, json.dumps(manifest))
    return wanted


def read_yaml(path: str | os.PathLike, what: str):
    """``files.read_yaml`` of a local file or an ``s3://`` object (staged), named as given."""
    return read_local_yaml(staged_file(path), what, name=path)


def local_only(path: str | os.PathLike | None, flag: str, why: str) -> None:
    """One line for an ``s3://`` path where only one on this machine will do (``why``: what it is for)."""
    if is_s3(path):
        raise DogbreedError(f"{flag} {path}: {why}; pass a path on this machine")


def mirrored_name(key: str, root: str, url: str) -> str:
    """Where the object ``key`` (under ``root``) goes in the mirror, relative to it; a key that would
    land outside the mirror (a ``..`` part) is refused."""
    rel = PurePosixPath(key).relative_to(root)
    if ".." in rel.parts:
        raise DogbreedError(f"S3 key {key!r} under {url} has a '..' part and would be copied outside the data set's "
                            f"mirror; rename or delete that object")
    return rel.as_posix()


class S3Image:
    """An image object to predict on: read like a ``Path`` (``read_bytes``), printed as its URL."""

    def __init__(self, url: str):
        self.url = url

    def read_bytes(self) -> bytes:
        with s3_errors(self.url):
            return filesystem().cat_file(_split(self.url))

    def __str__(self) -> str:
        return self.url


def images(url: str, suffixes: set[str]) -> list[S3Image]:
    """``url`` itself when it names an image object (one of these file ``suffixes``), else the images
    under it as a prefix (sorted)."""
    path = _split(url)
    fs = filesystem()
    if PurePosixPath(path).suffix.lower() in suffixes:
        with s3_errors(url):
            fs.info(path)  # a missing key is one line now, not at read time
        return [S3Image(url)]
    with s3_errors(url):
        keys = sorted(k for k, info in fs.find(path, detail=True).items()
                      if info.get("type") == "file" and PurePosixPath(k).suffix.lower() in suffixes)
    if not keys:
        with s3_errors(url):
            fs.ls(path.split("/", 1)[0])  # a missing bucket says so
        raise DogbreedError(f"no images found under {url}")
    return [S3Image(SCHEME + k) for k in keys]


def check_writable(url: str | os.PathLike, *, empty: bool = False) -> None:
    """Fail now, not after the work, when an ``s3://`` output cannot be written: the bucket must
    exist and these credentials must reach it (and with ``empty``, nothing may be under the prefix
    yet). A local output says its problems when it is made."""
    if not is_s3(url):
        return
    path = _split(url)
    fs = filesystem()
    with s3_errors(url):
        fs.ls(path.split("/", 1)[0])
        taken = empty and fs.find(path, maxdepth=1, withdirs=True)
    if taken:
        raise DogbreedError(f"{url} already holds objects; pick a new prefix")


def join(base: str | os.PathLike, name: str) -> str:
    """``name`` inside ``base``, a folder or an ``s3://`` prefix (which ``Path`` would cut to ``s3:/``)."""
    return f"{str(base).rstrip('/')}/{name}" if is_s3(base) else str(Path(base) / name)


def _put(keys: dict[Path, str], url: str) -> None:
    """Local files to their keys (``bucket/key``), any failure one line naming ``url``."""
    with s3_errors(url):
        filesystem().put([str(f) for f in keys], list(keys.values()))
    log.info("uploaded %d file(s) to %s", len(keys), url)


def upload_file(path: Path, url: str) -> None:
    """One local file to the object ``url``."""
    _put({path: _split(url)}, url)


@contextlib.contextmanager
def written_folder(out: str | os.PathLike, what: str) -> Iterator[Path]:
    """The folder a command writes its results into: ``out`` itself (made if missing; ``what``
    names it in errors, "--out"), or for an ``s3://`` prefix a temporary one whose files are
    uploaded under it when the block ends without an error, as ``train --out s3://`` uploads a run."""
    if not is_s3(out):
        yield make_folder(out, what)
        return
    with tempfile.TemporaryDirectory(prefix="dogbreed-upload-") as tmp:
        yield Path(tmp)
        written = sorted(p for p in Path(tmp).rglob("*") if p.is_file())
        _put({f: f"{_split(out)}/{f.relative_to(tmp).as_posix()}" for f in written}, out)


@contextlib.contextmanager
def written_file(out: str | os.PathLike | None, what: str) -> Iterator[Path | None]:
    """The path a command writes one file at: ``out`` itself (None stays None: the command's
    default), or for an ``s3://`` key a temporary file of the same name, uploaded there when the
    block ends without an error."""
    if not is_s3(out):
        yield None if out is None else Path(out)
        return
    key = _split(out)
    if out.endswith("/") or "/" not in key:
        raise DogbreedError(f"{what} {out} names a prefix, not an object; give the file's whole key, "
                            f"s3://BUCKET/PREFIX/NAME")
    check_writable(out)
    with tempfile.TemporaryDirectory(prefix="dogbreed-upload-") as tmp:
        path = Path(tmp) / key.rsplit("/", 1)[1]
        yield path
        upload_file(path, out)


def upload_run(run_dir: Path, url: str, name: str | None = None) -> str:
    """A finished run's artifact and results to ``url/<name>/`` (the run's folder name by default);
    returns the artifact's URL."""
    target = f"{_split(url)}/{name or run_dir.name}"
    files = [run_dir / name for name in UPLOADED if (run_dir / name).is_file()]
    try:
        with s3_errors(url):
            filesystem().put([str(f) for f in files], [f"{target}/{f.name}" for f in files])
    except DogbreedError as exc:
        raise DogbreedError(f"{exc} (the run itself is whole in {run_dir}; upload it with "
                            f"`aws s3 cp --recursive {run_dir} {SCHEME}{target}/`)") from None
    log.info("uploaded %s to %s%s/", ", ".join(f.name for f in files), SCHEME, target)
    return f"{SCHEME}{target}/model.tar.gz"


def staged(path: str | os.PathLike | None, suffixes: set[str], *, progress: bool = False,
           on_chunk: Callable[[], None] | None = None) -> Staged:
    """The data set at ``path`` ready to read: a local folder as it is, an ``s3://`` one staged
    into its mirror (``stage``)."""
    if is_s3(path):
        return stage(path, suffixes, progress=progress, on_chunk=on_chunk)
    return Staged(Path(path) if path else None)
