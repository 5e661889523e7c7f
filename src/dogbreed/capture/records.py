"""SageMaker Data Capture's files, written and read: one JSON object a line, one request a line,
in hourly folders.

    DEST/ENDPOINT/AllTraffic/yyyy/mm/dd/hh/*.jsonl

    {"captureData": {"endpointInput":  {"observedContentType", "mode": "INPUT",  "data", "encoding"},
                     "endpointOutput": {"observedContentType", "mode": "OUTPUT", "data", "encoding"}},
     "eventMetadata": {"eventId", "inferenceId", "inferenceTime": "2026-12-07T03:04:05Z"},
     "eventVersion": "0"}

``encoding`` is ``JSON`` or ``CSV`` for those content types (``data`` is then the text itself) and
``BASE64`` for everything else, as SageMaker stores them. Ground truth, sent later, uses the same
layout with ``{"groundTruthData": {"data", "encoding"}, "eventMetadata": {"eventId"}, ...}`` lines.

A line is written whole in one ``write``; a process killed mid-write can still leave a torn last
line, which the readers here skip with a warning (as they skip any line that is not a record).
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger(__name__)

VARIANT = "AllTraffic"
EVENT_VERSION = "0"
INFERENCE_ID_HEADER = "x-amzn-sagemaker-inference-id"  # boto3's invoke_endpoint(InferenceId=...)
EVENT_ID_HEADER = "x-dogbreed-event-id"  # the captured record's eventId, for sending ground truth later
JSON_TYPES = ("application/json", "application/jsonlines", "application/x-ndjson")
CSV_TYPES = ("text/csv",)
MAX_INFERENCE_ID = 64  # SageMaker's limit on InferenceId
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
HOUR_PARTS = re.compile(r"\d{4}/\d{2}/\d{2}/\d{2}$")


def timestamp(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime(TIME_FORMAT)


def parse_time(text: str) -> datetime:
    """An ``inferenceTime`` (or a window bound a user typed: ISO 8601, UTC unless it says otherwise)."""
    when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def hour_folder(endpoint: str, when: datetime) -> str:
    """Where a record of ``when`` goes, relative to the capture destination."""
    return f"{endpoint}/{VARIANT}/{when.astimezone(timezone.utc):%Y/%m/%d/%H}"


def encoding_of(content_type: str) -> str:
    media = content_type.split(";")[0].strip().lower()
    return "JSON" if media in JSON_TYPES else "CSV" if media in CSV_TYPES else "BASE64"


def _part(data: bytes, content_type: str, mode: str) -> list[bytes]:
    """One side of a request as the pieces of its JSON object. Base64 needs no escaping, so the
    (large) encoded body is spliced in as bytes rather than copied to a str and scanned again by
    ``json.dumps``: this is the capture writer's whole cost per record, on a thread that shares the
    GIL with the server."""
    encoding = encoding_of(content_type)
    head = json.dumps({"observedContentType": content_type, "mode": mode, "encoding": encoding}, separators=(",", ":"))
    if encoding == "BASE64":
        payload = [b'"', base64.b64encode(data), b'"']
    else:
        payload = [json.dumps(data.decode("utf-8", "replace"), separators=(",", ":")).encode()]
    return [head[:-1].encode(), b',"data":', *payload, b"}"]


def decode(part: dict) -> bytes:
    """The exact bytes a captured side held."""
    if part.get("encoding", "BASE64").upper() == "BASE64":
        return base64.b64decode(part["data"])
    return str(part["data"]).encode("utf-8")


def line(event_id: str, when: datetime, *, inference_id: str | None = None,
         request: tuple[bytes, str] | None = None, response: tuple[bytes, str] | None = None) -> bytes:
    """A capture record as the line a file holds: ``request`` and ``response`` are (bytes,
    content type), either left out when the capture mode leaves it out."""
    pieces = [b'{"captureData":{']
    if request is not None:
        pieces += [b'"endpointInput":', *_part(*request, "INPUT")]
    if response is not None:
        pieces += [b"," if request is not None else b"", b'"endpointOutput":', *_part(*response, "OUTPUT")]
    meta = {"eventId": event_id, "inferenceTime": timestamp(when)}
    if inference_id:
        meta["inferenceId"] = inference_id
    pieces += [b'},"eventMetadata":', json.dumps(meta, separators=(",", ":")).encode(),
               b',"eventVersion":"', EVENT_VERSION.encode(), b'"}\n']
    return b"".join(pieces)


def record(event_id: str, when: datetime, **sides) -> dict:
    """The same record as a dict (what a reader gets back)."""
    return json.loads(line(event_id, when, **sides))


def ground_truth(label: str, event_id: str | None = None, inference_id: str | None = None) -> dict:
    """A ground-truth record for one request, joined to its capture on ``inferenceId`` when given,
    else ``eventId``."""
    meta = {k: v for k, v in (("eventId", event_id), ("inferenceId", inference_id)) if v}
    if not meta:
        raise ValueError("a ground-truth record needs the request's eventId or inferenceId")
    return {"groundTruthData": {"data": label, "encoding": "CSV"}, "eventMetadata": meta, "eventVersion": EVENT_VERSION}


@dataclass
class Window:
    """A time window [start, end) of records; either bound may be open."""

    start: datetime | None = None
    end: datetime | None = None

    def holds(self, when: datetime) -> bool:
        return (self.start is None or when >= self.start) and (self.end is None or when < self.end)

    def holds_hour(self, hour: datetime) -> bool:
        """Whether any moment of the hour starting at ``hour`` is in the window."""
        return (self.end is None or hour < self.end) and (self.start is None or hour.timestamp() + 3600 > self.start.timestamp())


def files(root: str | Path, window: Window | None = None) -> list[Path]:
    """The ``.jsonl`` files under ``root`` (the capture destination, or any folder within it down
    to an hour's) whose hour folder meets ``window``, oldest hour first."""
    root = Path(root)
    found = []
    for path in root.rglob("*.jsonl"):
        rel = path.parent.as_posix()
        match = HOUR_PARTS.search(rel)
        if match is None:
            continue
        hour = datetime.strptime(match.group(0), "%Y/%m/%d/%H").replace(tzinfo=timezone.utc)
        if window is None or window.holds_hour(hour):
            found.append((hour, path.as_posix(), path))
    return [path for _, _, path in sorted(found)]


def lines(path: Path) -> Iterator[dict]:
    """The records of one file; a line that is not a JSON object (a torn last line after a crash)
    is skipped with a warning."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                doc = json.loads(raw)
                if not isinstance(doc, dict):
                    raise ValueError("not an object")
            except ValueError:
                torn = not raw.endswith(b"\n")
                log.warning("%s line %d: %s; skipped", path, number,
                            "torn (the writer stopped mid-line)" if torn else "not a JSON record")
                continue
            yield doc


def read(root: str | Path, window: Window | None = None) -> Iterator[dict]:
    """Every record under ``root`` whose ``inferenceTime`` is in ``window``, oldest file first."""
    for path in files(root, window):
        for doc in lines(path):
            meta = doc.get("eventMetadata") or {}
            try:
                when = parse_time(meta["inferenceTime"])
            except (KeyError, TypeError, ValueError):
                when = None
            if window is None or (when is not None and window.holds(when)):
                yield doc
