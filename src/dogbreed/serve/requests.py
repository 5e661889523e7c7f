"""Reading what clients send: bounded bodies and the API key."""

from __future__ import annotations

from starlette.requests import Request

from dogbreed.serve.errors import ClientError


async def read_body(request: Request, limit: int) -> bytes:
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
    return b"".join(chunks)


def authorized(request: Request, key: str | None) -> bool:
    """Bearer token, or (for boto3, which signs with AWS credentials) the key as the access key id."""
    if not key:
        return True
    auth = request.headers.get("authorization", "")
    if auth == f"Bearer {key}":
        return True
    return auth.startswith("AWS4-HMAC-SHA256") and f"Credential={key}/" in auth
