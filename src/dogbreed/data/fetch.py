"""``dogbreed data fetch``: download the dogImages zip (resumable, verified) and extract it safely."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from dogbreed import remote
from dogbreed.archive import safe_extract_zip
from dogbreed.data.layout import SPLITS
from dogbreed.errors import DogbreedError

log = logging.getLogger(__name__)

DATASET_URL = "https://s3-us-west-1.amazonaws.com/udacity-aind/dog-project/dogImages.zip"
CHUNK = 1 << 20
SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def _file_digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _md5_etag(etag: str | None) -> str | None:
    """S3's ETag of a single-part upload is the object's MD5: a checksum for free."""
    etag = (etag or "").strip('"')
    return etag if re.fullmatch(r"[0-9a-f]{32}", etag) else None


def _offline_error(url: str, reason, dest: Path) -> DogbreedError:
    return DogbreedError(
        f"cannot reach {url} ({reason}); download that file on a machine with internet, then run "
        f"`dogbreed data fetch --zip PATH` (or place it at {dest})"
    )


def download(url: str, dest: str | os.PathLike, *, sha256: str | None = None, timeout: float = 30.0,
             progress: bool = True) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` if an earlier transfer was cut.

    Verified by size (Content-Length / Content-Range), by the MD5 in an S3-style ETag when the
    server gives one, and by ``sha256`` when given. A file that fails a check is deleted.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part, meta_path = dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() and part.exists() else {}
    have = part.stat().st_size if part.exists() and meta else 0
    headers = {"User-Agent": "dogbreed"}
    if have:
        headers["Range"] = f"bytes={have}-"
        if meta.get("etag"):
            headers["If-Range"] = meta["etag"]
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to fetch: the part file is already whole
            response = None
        else:
            raise DogbreedError(f"{url} answered HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise _offline_error(url, getattr(exc, "reason", exc), dest) from None

    if response is not None:
        with response:
            if response.status == 206:
                match = re.match(r"bytes (\d+)-\d+/(\d+)", response.headers.get("Content-Range", ""))
                if not match or int(match.group(1)) != have:
                    raise DogbreedError(f"{url} answered a range that does not continue {part}; delete it and retry")
                total = int(match.group(2))
                log.info("resuming %s at %d of %d bytes", dest.name, have, total)
            else:  # a full answer: the server ignored the range or the file changed; start over
                have = 0
                length = response.headers.get("Content-Length")
                total = int(length) if length else None
                meta = {"etag": response.headers.get("ETag"), "total": total}
                meta_path.write_text(json.dumps(meta))
            meta["total"] = total
            mode = "ab" if have else "wb"
            bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=dest.name, disable=not progress)
            try:
                with open(part, mode) as out:
                    for block in iter(lambda: response.read(CHUNK), b""):
                        out.write(block)
                        bar.update(len(block))
            except (OSError, urllib.error.URLError) as exc:
                raise DogbreedError(
                    f"download of {url} was interrupted at {part.stat().st_size} bytes ({exc}); "
                    "run the same command again to resume"
                ) from None
            finally:
                bar.close()

    _verify(part, meta, sha256, meta_path, url)
    os.replace(part, dest)
    meta_path.unlink(missing_ok=True)
    return dest


def _verify(part: Path, meta: dict, sha256: str | None, meta_path: Path, url: str) -> None:
    def fail(what: str) -> DogbreedError:
        part.unlink(missing_ok=True)
        meta_path.unlink(missing_ok=True)
        return DogbreedError(f"download of {url} failed its {what}; the file was deleted, run the command again")

    size = part.stat().st_size
    if meta.get("total") is not None and size != meta["total"]:
        if size < meta["total"]:
            raise DogbreedError(f"download of {url} stopped at {size} of {meta['total']} bytes; run the same command again to resume")
        raise fail(f"size check ({size} bytes, expected {meta['total']})")
    md5 = _md5_etag(meta.get("etag"))
    if md5 and _file_digest(part, "md5") != md5:
        raise fail("MD5 check against the server's ETag")
    if sha256 and _file_digest(part, "sha256") != sha256.lower():
        raise fail("SHA-256 check")


def _dataset_root(folder: Path) -> Path:
    """The folder holding train/valid/test inside an extracted archive (``dogImages/``)."""
    for candidate in [folder, *sorted(p for p in folder.rglob("*") if p.is_dir())]:
        if all((candidate / s).is_dir() for s in SPLITS):
            return candidate
    raise DogbreedError("the archive holds no train/ valid/ test/ folders")


def extract_dataset(zip_path: str | os.PathLike, dest: str | os.PathLike, name: str = "dogImages", *,
                    sha256: str | None = None) -> Path:
    """Safely extract a data-set zip into ``dest/name``, once it matches ``sha256`` if given;
    nothing is left behind if it fails."""
    zip_path, dest = Path(zip_path), Path(dest)
    if not zip_path.is_file():
        raise DogbreedError(f"zip file {zip_path} does not exist")
    if sha256 and (actual := _file_digest(zip_path, "sha256")) != sha256.lower():
        raise DogbreedError(f"zip file {zip_path} does not match --sha256 {sha256}: its SHA-256 is {actual}; "
                            f"nothing was extracted (check that it is the file you meant)")
    target = dest / name
    if target.exists():
        raise DogbreedError(f"{target} already exists; remove it to extract again")
    work = dest / f".{name}.extracting"
    made_dest = not dest.exists()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        safe_extract_zip(zip_path, work)
        os.replace(_dataset_root(work), target)
    except BaseException:
        if made_dest:  # a folder this call made for nothing is not left behind either
            shutil.rmtree(dest, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def fetch(dest: str | os.PathLike = "data", *, url: str = DATASET_URL, zip_path: str | os.PathLike | None = None,
          sha256: str | None = None, progress: bool = True) -> Path:
    """Download (unless ``zip_path`` is given) and extract; returns the data-set root. ``url`` or
    ``zip_path`` may be an ``s3://`` object (staged, not downloaded by HTTP). ``sha256``
    is checked on whatever zip is extracted: a download, an earlier one found in ``dest``, or
    ``zip_path``."""
    if sha256 is not None and not SHA256.fullmatch(sha256):
        raise DogbreedError(f"--sha256 {sha256!r} is not a SHA-256 digest (64 hex digits, as `sha256sum` prints)")
    if remote.is_s3(dest):
        raise DogbreedError(f"--dest {dest}: the data set is extracted on this machine; pass a local folder, then "
                            f"`aws s3 sync DEST/dogImages {dest}` to put it on S3")
    if zip_path is None and remote.is_s3(url):
        zip_path = url  # a zip on S3 is read as a local copy would be
    if remote.is_s3(zip_path):
        zip_path = remote.staged_file(zip_path, progress=progress)
    dest = Path(dest)
    unchecked = sha256  # a download checks its own digest: not hashed twice
    if zip_path is None:
        zip_path = dest / Path(url).name
        if not zip_path.exists():
            unchecked = None
            made_dest = not dest.exists()
            try:
                download(url, zip_path, sha256=sha256, progress=progress)
            except BaseException:
                # A folder made for a download that never began goes; one holding a partial
                # download stays, so that the same command resumes it.
                if made_dest and dest.is_dir() and not any(dest.iterdir()):
                    dest.rmdir()
                raise
    return extract_dataset(zip_path, dest, Path(zip_path).stem if Path(zip_path).stem else "dogImages", sha256=unchecked)
