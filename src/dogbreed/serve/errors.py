"""Every refused request is answered ``{"error": "..."}`` with a 4xx (or 5xx) status. On the
SageMaker Runtime API route the answer also takes SageMaker's error shape, chosen by the error's
kind, so that boto3 raises the right exception (and never retries a client's bad input)."""

from __future__ import annotations

import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from dogbreed.runtime.pipeline import RequestError

RUNTIME_PREFIX = "/endpoints/"  # SageMaker Runtime's InvokeEndpoint route

# Kind -> SageMaker Runtime's error type. "service" errors (503 busy, 504 timeout) keep a plain
# body: boto3 retries those statuses, as it should.
SAGEMAKER_TYPES = {"validation": "ValidationError", "access": "AccessDeniedException", "model": "ModelError"}


class ClientError(Exception):
    """A request the server refuses: answered with ``status`` and ``{"error": message}``.

    ``kind``: ``model`` (the request itself: bad image, type, size), ``validation`` (no such
    endpoint), ``access`` (API key), ``service`` (the server cannot answer now)."""

    def __init__(self, status: int, message: str, headers: dict | None = None, kind: str = "model"):
        super().__init__(message)
        self.status, self.message, self.headers, self.kind = status, message, headers or {}, kind


def error_response(request: Request, exc: ClientError) -> JSONResponse:
    headers = dict(exc.headers)
    body: dict = {"error": exc.message}
    status = exc.status
    sagemaker_type = SAGEMAKER_TYPES.get(exc.kind)
    if request.url.path.startswith(RUNTIME_PREFIX) and sagemaker_type:
        headers["x-amzn-RequestId"] = str(uuid.uuid4())
        headers["x-amzn-ErrorType"] = sagemaker_type
        if exc.kind == "model":  # SageMaker wraps what the model container answered
            body.update({"__type": sagemaker_type, "message": f"Received client error ({status}) from model",
                         "OriginalStatusCode": status, "OriginalMessage": exc.message})
            status = 424
        else:
            body.update({"__type": sagemaker_type, "message": exc.message})
    return JSONResponse(body, status_code=status, headers=headers)


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ClientError)
    async def client_error(request: Request, exc: ClientError):
        return error_response(request, exc)

    @app.exception_handler(RequestError)  # the inference pipeline refused the request
    async def request_error(request: Request, exc: RequestError):
        return error_response(request, ClientError(exc.status_code, exc.message))

    @app.exception_handler(StarletteHTTPException)  # unknown route, wrong method, a malformed form
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)  # a bug: JSON like every other answer (uvicorn logs the traceback)
    async def server_error(request: Request, exc: Exception):
        return JSONResponse({"error": "internal server error; the server's log has the details"}, status_code=500)
