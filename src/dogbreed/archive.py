"""Safe extraction of tar and zip archives: no absolute paths, no ``..``, no links or devices."""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from dogbreed.errors import DogbreedError


def _safe_name(name: str, archive: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise DogbreedError(f"{archive}: refusing unsafe member path {name!r} (absolute or outside the target)")
    return path


def safe_extract_tar(archive: str | os.PathLike, dest: str | os.PathLike) -> None:
    dest = Path(dest)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _safe_name(member.name, str(archive))
                if not (member.isfile() or member.isdir()):
                    raise DogbreedError(f"{archive}: refusing member {member.name!r} (links and special files are not allowed)")
            for member in members:
                target = dest / _safe_name(member.name, str(archive))
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
    except (tarfile.TarError, EOFError, OSError) as exc:
        reason = str(exc).splitlines()[0].rstrip(":")
        raise DogbreedError(f"{archive}: not a readable tar.gz archive ({reason})") from None


def safe_extract_zip(archive: str | os.PathLike, dest: str | os.PathLike, skip_prefixes: tuple[str, ...] = ("__MACOSX/",)) -> list[str]:
    """Extract; returns the member names written. Symlinks (stored as unix mode bits) are refused."""
    dest = Path(dest)
    written = []
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = [i for i in zf.infolist() if not i.filename.startswith(skip_prefixes)]
            for info in infos:
                _safe_name(info.filename, str(archive))
                kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the archiver stored no type
                if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                    raise DogbreedError(f"{archive}: refusing member {info.filename!r} (links and special files are not allowed)")
            for info in infos:
                target = dest / _safe_name(info.filename, str(archive))
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                written.append(info.filename)
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error, RuntimeError, NotImplementedError) as exc:
        # zlib.error: damaged compressed data; RuntimeError: encrypted; NotImplementedError: unknown compression
        raise DogbreedError(f"{archive}: not a readable zip archive ({exc})") from None
    return written
