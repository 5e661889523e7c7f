"""Reading what clients send: bounded bodies, content negotiation, SageMaker's custom attributes."""

from __future__ import annotations

import re

from starlette.requests import Request

from dogbreed.runtime.inference import IMAGE_TYPES, JSON_TYPE

MAX_TOPK = 1000


class ClientError(Exception):
    """A request the server refuses: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


async def read_body(request: Request, limit: int, what: str = "the image bytes (or JSON instances)") -> bytes:
    """The body, refusing (413) as soon as it is known to exceed ``limit``: from Content-Length
    before reading anything, or while streaming, never reading past the limit."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ClientError(413, f"body of {declared} bytes is over the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ClientError(413, f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body:
        raise ClientError(400, f"empty body; send {what}")
    return body


def content_type(request: Request) -> str:
    ctype = (request.headers.get("content-type") or "application/octet-stream").split(";")[0].strip().lower()
    if ctype not in IMAGE_TYPES and ctype != JSON_TYPE:
        raise ClientError(415, f"unsupported Content-Type {ctype!r}; use one of {', '.join(IMAGE_TYPES + (JSON_TYPE,))}")
    return ctype


def check_accept(request: Request) -> None:
    accept = request.headers.get("accept") or "*/*"
    kinds = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    if not any(k in (JSON_TYPE, "*/*", "application/*") for k in kinds):
        raise ClientError(406, f"cannot answer Accept {accept!r}; answers are application/json")


def custom_attributes(request: Request, default_topk: int, default_threshold: float) -> tuple[int, float]:
    """``X-Amzn-SageMaker-Custom-Attributes: topk=3,threshold=0.5`` (either may be absent)."""
    raw = request.headers.get("x-amzn-sagemaker-custom-attributes", "")
    pairs = dict(re.findall(r"(\w+)\s*=\s*([^,;\s]+)", raw))
    try:
        topk = int(pairs["topk"]) if "topk" in pairs else None
        threshold = float(pairs["threshold"]) if "threshold" in pairs else None
    except ValueError:
        raise ClientError(400, f"bad X-Amzn-SageMaker-Custom-Attributes {raw!r}; expected topk=N,threshold=X") from None
    if (topk is not None and not 1 <= topk <= MAX_TOPK) or (threshold is not None and not 0 <= threshold <= 1):
        raise ClientError(400, f"custom attribute topk must be 1..{MAX_TOPK} and threshold 0..1")
    return (default_topk if topk is None else topk), (default_threshold if threshold is None else threshold)
