"""A window of captured requests, ready to judge: each captured image with its event and inference
ids and what the endpoint answered, and the ground truth sent for them.

A JSON request (``{"instances": [{"b64": ...}, ...]}``) or a JSON lines one (Batch Transform's
MultiRecord bodies) holds several images: each becomes its own item, keyed ``EVENT_ID#i``. A request captured without its input (``--capture-mode output``)
cannot be re-embedded and is counted apart.
"""

from __future__ import annotations

import binascii
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from dogbreed.capture import records
from dogbreed.runtime import pipeline
from dogbreed.runtime.pipeline import RequestError

log = logging.getLogger(__name__)


@dataclass
class Item:
    key: str  # the event id (and #i for the i-th image of a JSON request)
    event_id: str
    inference_id: str | None
    time: str
    image: bytes  # what the client sent (possibly not an image at all)
    answer: dict | None  # what the endpoint answered for this image, where the output was captured


@dataclass
class Window:
    items: list[Item] = field(default_factory=list)
    requests: int = 0
    without_input: int = 0  # captured with --capture-mode output: nothing to re-embed


def read(capture: str | Path, window: records.Window) -> Window:
    """The captured images of ``window`` under ``capture`` (the serve --capture folder)."""
    found = Window()
    for doc in records.read(capture, window):
        data, meta = doc.get("captureData") or {}, doc.get("eventMetadata") or {}
        event_id = meta.get("eventId")
        if not event_id:
            continue
        found.requests += 1
        sent = data.get("endpointInput")
        if sent is None:
            found.without_input += 1
            continue
        answers = _answers(data.get("endpointOutput"))
        try:
            body = records.decode(sent)
        except (binascii.Error, ValueError, KeyError):
            body = b""
        images = _images(body, sent.get("observedContentType", ""))
        for i, image in enumerate(images):
            answer = answers[i] if answers and i < len(answers) else None
            key = event_id if len(images) == 1 else f"{event_id}#{i}"
            found.items.append(Item(key, event_id, meta.get("inferenceId"), meta.get("inferenceTime", ""), image, answer))
    return found


def _images(body: bytes, content_type: str) -> list[bytes]:
    """The images a request body held, read as the endpoint read them (``pipeline.payloads``): one
    for an image type, each instance of a JSON request, each record of JSON lines; a body the
    endpoint refused is one unreadable input."""
    try:
        return pipeline.payloads(body, pipeline.content_type(content_type), max_instances=sys.maxsize)[0]
    except RequestError:
        return [body]


def _answers(output: dict | None) -> list[dict] | None:
    """The answers of a captured output, one per image: a JSON object, a list, or JSON lines (each
    line an object or a list)."""
    if not output:
        return None
    try:
        text = records.decode(output)
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (ValueError, binascii.Error, KeyError):
        return None
    answers = [a for line in lines for a in (line if isinstance(line, list) else [line])]
    return [a for a in answers if isinstance(a, dict)] or None


def ground_truth(folder: str | Path) -> dict[str, str]:
    """id -> true label, from SageMaker's ground-truth records under ``folder`` (any time): each
    keyed by its inferenceId when it has one, else its eventId."""
    truth: dict[str, str] = {}
    for path in records.files(folder):
        for doc in records.lines(path):
            meta, data = doc.get("eventMetadata") or {}, doc.get("groundTruthData") or {}
            key = meta.get("inferenceId") or meta.get("eventId")
            if key and "data" in data:
                try:
                    truth[key] = records.decode(data).decode("utf-8").strip()
                except (ValueError, binascii.Error, UnicodeDecodeError):
                    log.warning("%s: ground truth for %s does not decode; skipped", path, key)
    return truth
