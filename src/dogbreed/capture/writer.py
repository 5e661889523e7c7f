"""The capture writer: requests go in on the server's event loop, lines come out on one thread.

A request never waits for capture and never fails because of it: :meth:`CaptureWriter.submit` only
puts the request's bytes on a bounded queue (bounded in records and in bytes). When the queue is
full, or the capture disk is fuller than ``max_disk_percent`` (AWS advises keeping it under 75%),
the record is dropped and counted. The writer thread turns records into lines and appends them to
the hour's file in one ``write`` each batch; a new file starts each hour and past
``max_file_bytes``. Each process has its own writer and its own files (``serve --workers N``
never interleaves lines).

For an ``s3://`` destination the files are written to a local spool folder and each is uploaded
when it is closed: at the hour, at its size, every ``upload_every_s`` seconds, and when the
server stops. An upload that fails leaves the file in the spool folder, and the log says where.

Written by hand: SageMaker's capture agent is part of its hosting service, not a library.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from dogbreed import remote
from dogbreed.capture import records

log = logging.getLogger(__name__)

RESULTS = ("captured", "not_sampled", "dropped_queue_full", "dropped_disk_full", "failed")
MODES = ("input", "output")
DEFAULT_QUEUE_RECORDS = 1024
DEFAULT_QUEUE_BYTES = 256 * 1024 * 1024  # request bodies waiting to be written, at most
DEFAULT_FILE_BYTES = 64 * 1024 * 1024
DEFAULT_UPLOAD_EVERY_S = 60.0
DISK_CHECK_EVERY_S = 1.0
_STOP = object()


@dataclass
class _Pending:
    event_id: str
    when: datetime
    inference_id: str | None
    request: tuple[bytes, str] | None
    response: tuple[bytes, str] | None

    @property
    def size(self) -> int:
        return sum(len(part[0]) for part in (self.request, self.response) if part is not None)


@dataclass
class _Open:
    hour: str
    path: Path
    fd: int
    size: int
    opened: float


class CaptureWriter:
    """Captures a ``percent`` share of requests to ``dest`` (a folder or an ``s3://`` prefix) for the
    endpoint ``endpoint``; ``modes`` holds ``input``, ``output`` or both. ``on_result(result, n)``
    hears each count as it happens (``result`` one of :data:`RESULTS`)."""

    def __init__(self, dest: str | os.PathLike, endpoint: str, *, percent: float = 100.0,
                 modes: tuple[str, ...] = MODES, max_disk_percent: float = 75.0,
                 queue_records: int = DEFAULT_QUEUE_RECORDS, queue_bytes: int = DEFAULT_QUEUE_BYTES,
                 max_file_bytes: int = DEFAULT_FILE_BYTES, upload_every_s: float = DEFAULT_UPLOAD_EVERY_S,
                 on_result: Callable[[str, int], None] | None = None):
        self.dest, self.endpoint = str(dest), endpoint
        self.percent, self.modes, self.max_disk_percent = percent, modes, max_disk_percent
        self.queue_bytes, self.max_file_bytes, self.upload_every_s = queue_bytes, max_file_bytes, upload_every_s
        self.on_result = on_result
        self.remote = remote.is_s3(self.dest)
        self.root = Path(tempfile.mkdtemp(prefix="dogbreed-capture-")) if self.remote else Path(self.dest)
        self.counts = dict.fromkeys(RESULTS, 0)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_records)
        self._pending_bytes = 0
        self._lock = threading.Lock()
        self._disk_checked, self._disk_full = 0.0, False
        self._open: _Open | None = None
        self._warned = 0.0
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)

    # --- the request side (event loop) ----------------------------------------------------------

    def sample(self) -> str | None:
        """A new event id when this request is to be captured, else None (and it is counted)."""
        if self.percent >= 100 or random.random() * 100 < self.percent:
            return str(uuid.uuid4())
        self._count("not_sampled")
        return None

    def submit(self, event_id: str, *, inference_id: str | None = None, request: tuple[bytes, str] | None = None,
               response: tuple[bytes, str] | None = None, when: datetime | None = None) -> bool:
        """Queue one request's record (``request``/``response``: bytes and content type); False when
        it was dropped instead (counted by why). Never blocks."""
        item = _Pending(event_id, when or datetime.now(timezone.utc), inference_id,
                        request if "input" in self.modes else None, response if "output" in self.modes else None)
        if self.disk_full():
            self._count("dropped_disk_full")
            return False
        with self._lock:
            if self._pending_bytes + item.size > self.queue_bytes:
                full = True
            else:
                try:
                    self._queue.put_nowait(item)
                    self._pending_bytes += item.size
                    full = False
                except queue.Full:
                    full = True
        if full:
            self._count("dropped_queue_full")
        return not full

    def disk_full(self) -> bool:
        """The capture disk is fuller than allowed (checked at most once a second)."""
        now = time.monotonic()
        if now - self._disk_checked >= DISK_CHECK_EVERY_S:
            self._disk_checked = now
            try:
                usage = shutil.disk_usage(self._existing(self.root))
                self._disk_full = usage.used * 100 / max(usage.total, 1) > self.max_disk_percent
            except OSError:
                self._disk_full = False  # the writer will say what is wrong with the folder
        return self._disk_full

    # --- the writer thread ------------------------------------------------------------------------

    def start(self) -> "CaptureWriter":
        self._thread.start()
        return self

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, close (and upload) the open file, and stop the thread."""
        if self._thread.is_alive():
            try:
                self._queue.put(_STOP, timeout=timeout)
            except queue.Full:
                log.warning("capture: the queue did not drain in %gs; records still queued are lost", timeout)
            self._thread.join(timeout)
        self._finish()
        if self.remote and not any(self.root.rglob("*.jsonl")):  # all uploaded: the spool folder goes
            shutil.rmtree(self.root, ignore_errors=True)

    def _run(self) -> None:
        while True:
            try:
                batch = [self._queue.get(timeout=1.0)]
            except queue.Empty:
                batch = []
            while batch and len(batch) < 256:  # what else is waiting goes in the same write
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is _STOP for item in batch)
            items = [item for item in batch if item is not _STOP]
            with self._lock:
                self._pending_bytes -= sum(item.size for item in items)
            self._write(items)
            if self._open and self.remote and time.monotonic() - self._open.opened >= self.upload_every_s:
                self._finish()
            if stop:
                return

    def _write(self, items: list[_Pending]) -> None:
        hours: dict[str, list[bytes]] = {}
        for item in items:  # records of one batch may straddle an hour
            line = records.line(item.event_id, item.when, inference_id=item.inference_id, request=item.request,
                                response=item.response)
            hours.setdefault(records.hour_folder(self.endpoint, item.when), []).append(line)
        for hour, lines in hours.items():
            data = b"".join(lines)
            try:
                target = self._file(hour, len(data))
                _write_all(target.fd, data)
                target.size += len(data)
                self._count("captured", len(lines))
            except OSError as exc:
                self._count("failed", len(lines))
                self._warn(f"capture: cannot write under {self.root} ({exc.strerror or exc}); {len(lines)} record(s) lost")

    def _file(self, hour: str, adding: int) -> _Open:
        current = self._open
        if current is None or current.hour != hour or (current.size and current.size + adding > self.max_file_bytes):
            self._finish()
            now = datetime.now(timezone.utc)
            folder = self.root / hour
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{now:%M-%S}-{now.microsecond // 1000:03d}-{uuid.uuid4().hex}.jsonl"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            self._open = current = _Open(hour, path, fd, 0, time.monotonic())
        return current

    def _finish(self) -> None:
        """Close the open file; for S3, upload it and remove the local copy."""
        current, self._open = self._open, None
        if current is None:
            return
        os.close(current.fd)
        if not self.remote:
            return
        url = remote.join(self.dest, current.path.relative_to(self.root).as_posix())
        try:
            remote.upload_file(current.path, url)
            current.path.unlink()
        except Exception as exc:  # noqa: BLE001 - the records are kept; the log says where
            self._warn(f"capture: upload to {url} failed ({exc}); the records stay in {current.path}")

    # --- accounting -------------------------------------------------------------------------------

    def _count(self, result: str, n: int = 1) -> None:
        with self._lock:
            self.counts[result] += n
        if self.on_result:
            self.on_result(result, n)

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned > 60 or not self._warned:  # once a minute at most: a full disk would flood the log
            self._warned = now
            log.warning(message)

    @staticmethod
    def _existing(path: Path) -> Path:
        while not path.exists() and path != path.parent:
            path = path.parent
        return path


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def parse_modes(text: str) -> tuple[str, ...]:
    """``input,output`` (either, or both, in any case and order) as a tuple; ValueError otherwise."""
    modes = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    if not modes or any(m not in MODES for m in modes):
        raise ValueError(f"{text!r} is not a capture mode; use input, output or input,output")
    return modes
