"""Reading what clients send: bounded bodies and the API key."""

from __future__ import annotations

import hmac

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
    """A bearer token (the scheme in any case, RFC 7235), or, for boto3, which signs with AWS
    credentials, the key as the access key id. Compared in constant time."""
    if not key:
        return True
    scheme, _, value = request.headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer":
        return hmac.compare_digest(value.strip().encode(), key.encode())
    if scheme == "AWS4-HMAC-SHA256":
        credential = value.partition("Credential=")[2].partition("/")[0]
        return hmac.compare_digest(credential.encode(), key.encode())
    return False
