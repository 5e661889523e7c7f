"""The endpoint: SageMaker's container routes (/ping, /invocations), the SageMaker Runtime API
(/endpoints/{name}/invocations, for boto3), /predict for people, a web page and /metrics."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from dogbreed.runtime.inference import (
    JSON_TYPE,
    InputError,
    LoadedModel,
    decode_instances,
    decode_pixels,
    topk_answer,
)
from dogbreed.runtime.network import predict_probs
from dogbreed.runtime.presets import DEFAULT_MAX_PIXELS
from dogbreed.serve.backends import load_backend
from dogbreed.serve.batcher import Batcher, Overloaded
from dogbreed.serve.requests import ClientError, check_accept, content_type, custom_attributes, read_body

log = logging.getLogger(__name__)
PAGE = Path(__file__).with_name("page.html")
DOCS_PAGE = Path(__file__).with_name("docs.html")


@dataclass
class ServeConfig:
    model: str
    name: str = "dogbreed"
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    max_batch_size: int = 8
    max_delay_ms: float = 5.0
    queue_size: int = 256
    timeout_s: float = 30.0
    max_body_mb: float = 6.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_instances: int = 16
    topk: int = 5
    threshold: float | None = None  # None: the artifact's own
    backend: str = "eager"
    api_key: str | None = None


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("dogbreed_requests", "Requests by route and status", ["route", "status"], registry=self.registry)
        self.latency = Histogram("dogbreed_request_seconds", "Request latency", ["route"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.batch = Histogram("dogbreed_batch_size", "Images per model batch", registry=self.registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.queue = Gauge("dogbreed_queue_depth", "Images waiting for the model", registry=self.registry)
        self.load = Gauge("dogbreed_model_load_seconds", "Model load and warm-up time", registry=self.registry)


class Server:
    """The loaded model, its batcher and decode pool: everything the routes share.

    Every torch computation big enough to run in parallel happens on one thread, the model thread:
    loading, warm-up, normalising and the forward pass. Decode threads do PIL work only; the event
    loop takes each answer's top-k of 133 numbers. On CPU each thread that runs a parallel torch
    operation gets its own OpenMP team, and once the teams hold more threads than there are cores
    libgomp stops spin-waiting between operations: on 2 cores a lone forward pass took 53 ms
    instead of 37 (benchmarks/thread_teams.py).
    """

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.metrics = Metrics()
        self.model: LoadedModel | None = None
        self.batcher: Batcher | None = None
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.decode_pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="decode")
        self.load_seconds = 0.0
        self.ready = False

    @property
    def threshold(self) -> float:
        return self.model.threshold if self.cfg.threshold is None else self.cfg.threshold

    def load(self) -> LoadedModel:
        """Load the artifact on the model thread, waiting for it (``dogbreed serve`` calls this before
        it listens, so that a bad artifact is a one-line error)."""
        return self.model_thread.submit(self._load).result()

    def _load(self) -> LoadedModel:
        if self.model is None:
            started = time.perf_counter()
            self.model = load_backend(self.cfg.model, self.cfg.backend)
            self.load_seconds = time.perf_counter() - started
        return self.model

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        await loop.run_in_executor(self.model_thread, self._load)
        await loop.run_in_executor(self.model_thread, self._warm)
        self.batcher = Batcher(self._predict, self.model_thread, max_batch_size=self.cfg.max_batch_size,
                               max_delay_ms=self.cfg.max_delay_ms, queue_size=self.cfg.queue_size,
                               on_batch=self.metrics.batch.observe)
        self.metrics.queue.set_function(lambda: self.batcher.depth)
        self.batcher.start()
        self.metrics.load.set(self.load_seconds + time.perf_counter() - started)
        self.ready = True
        log.info("model %s loaded and warmed in %.2fs (backend %s, %s)", self.cfg.model,
                 self.load_seconds + time.perf_counter() - started, self.cfg.backend, self.model.device)

    async def stop(self) -> None:
        self.ready = False
        if self.batcher:
            await self.batcher.stop()
        self.model_thread.shutdown(wait=False, cancel_futures=True)
        self.decode_pool.shutdown(wait=False, cancel_futures=True)

    def _warm(self) -> None:
        """First calls are slow: pay for them before /ping says ready."""
        size = self.model.preset.crop_size
        self._predict([torch.zeros(3, size, size, dtype=torch.uint8)] * self.cfg.max_batch_size)

    def _predict(self, pixels: list[torch.Tensor]) -> torch.Tensor:
        """uint8 pixels in, probabilities out: the model thread's whole job."""
        batch = torch.stack(pixels).to(self.model.device)
        images = self.model.preset.normalize(batch).contiguous(memory_format=torch.channels_last)
        return predict_probs(self.model.model, images).cpu()

    def _decode(self, data: bytes) -> torch.Tensor:
        return decode_pixels(self.model, data, max_pixels=self.cfg.max_pixels)

    async def answer(self, images: list[bytes], topk: int, threshold: float) -> list[dict]:
        """Decode in parallel off the event loop, then batch with other requests' images."""
        if len(images) > self.cfg.max_instances:
            raise ClientError(400, f"{len(images)} instances is over the limit of {self.cfg.max_instances}")
        loop = asyncio.get_running_loop()

        async def decode(i: int, data: bytes) -> torch.Tensor:
            try:
                return await loop.run_in_executor(self.decode_pool, self._decode, data)
            except InputError as exc:  # in a list, say which one
                raise ClientError(400, f"instance {i}: {exc}" if len(images) > 1 else str(exc)) from None

        self.batcher.incoming += 1
        try:
            tensors = await asyncio.gather(*(decode(i, b) for i, b in enumerate(images)))
        finally:
            self.batcher.incoming -= 1
        try:
            probs = await asyncio.wait_for(self.batcher.submit(list(tensors)), self.cfg.timeout_s)
        except Overloaded as exc:
            raise ClientError(503, f"server busy: {exc}; retry shortly", {"Retry-After": "1"}) from None
        except asyncio.TimeoutError:
            raise ClientError(504, f"no answer within {self.cfg.timeout_s:g}s; the server is overloaded") from None
        return [topk_answer(p, self.model, topk, threshold) for p in probs]


def _authorized(request: Request, key: str | None) -> bool:
    """Bearer token, or (for boto3, which signs with AWS credentials) the key as the access key id."""
    if not key:
        return True
    auth = request.headers.get("authorization", "")
    if auth == f"Bearer {key}":
        return True
    return auth.startswith("AWS4-HMAC-SHA256") and f"Credential={key}/" in auth


def create_app(cfg: ServeConfig, server: Server | None = None) -> FastAPI:
    """The app; ``server`` may come with its model already loaded (see :meth:`Server.load`)."""
    server = server or Server(cfg)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await server.start()
        yield
        await server.stop()

    # /docs is our own page (FastAPI's loads Swagger UI from a CDN, which fails offline).
    app = FastAPI(title="dogbreed", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Dog-breed classification with SageMaker's endpoint contract.")
    app.state.server = server
    limit = int(cfg.max_body_mb * 1024 * 1024)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        started = time.perf_counter()
        open_paths = ("/ping", "/", "/docs", "/openapi.json")  # static pages and the spec; the page's calls carry the key
        if request.url.path not in open_paths and not _authorized(request, cfg.api_key):
            response = _error(request, ClientError(401, "missing or wrong API key; send Authorization: Bearer KEY",
                                                   {"WWW-Authenticate": "Bearer"}))
        else:
            response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "other")
        server.metrics.requests.labels(path, str(response.status_code)).inc()
        server.metrics.latency.labels(path).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(ClientError)
    async def client_error(request: Request, exc: ClientError):
        return _error(request, exc)

    @app.exception_handler(StarletteHTTPException)  # unknown route, wrong method, a malformed form
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)  # a bug: JSON like every other answer (uvicorn logs the traceback)
    async def server_error(request: Request, exc: Exception):
        return JSONResponse({"error": "internal server error; the server's log has the details"}, status_code=500)

    @app.get("/ping", summary="Health: 200 once the model is loaded and warmed, 503 before")
    async def ping():
        if not server.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ok"}

    async def invoke(request: Request) -> Response:
        if not server.ready:
            raise ClientError(503, "the model is still loading", {"Retry-After": "1"})
        check_accept(request)
        ctype = content_type(request)
        topk, threshold = custom_attributes(request, cfg.topk, server.threshold)
        body = await read_body(request, limit)
        if ctype == JSON_TYPE:
            try:
                images = decode_instances(body, cfg.max_instances)
            except InputError as exc:
                raise ClientError(400, str(exc)) from None
        else:
            images = [body]
        answers = await server.answer(images, topk, threshold)
        return JSONResponse(answers if ctype == JSON_TYPE else answers[0])

    @app.post("/invocations", summary="SageMaker container contract: raw image bytes (or JSON instances) in, top-k out")
    async def invocations(request: Request):
        return await invoke(request)

    @app.post("/endpoints/{name}/invocations", summary="SageMaker Runtime InvokeEndpoint (boto3's sagemaker-runtime)")
    async def runtime_invoke(name: str, request: Request):
        if name != cfg.name:
            raise ClientError(400, f"Endpoint {name} not found; this server answers to {cfg.name!r}")
        response = await invoke(request)
        response.headers["x-Amzn-Invoked-Production-Variant"] = "AllTraffic"
        response.headers["x-amzn-RequestId"] = str(uuid.uuid4())
        return response

    @app.post("/predict", summary="Multipart upload for people and the web page: curl -F image=@dog.jpg")
    async def predict(request: Request):
        if not server.ready:
            raise ClientError(503, "the model is still loading", {"Retry-After": "1"})
        body = await read_body(request, limit, "a multipart form with the photo in the field 'image' (curl -F image=@photo.jpg)")

        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}

        form = await Request(request.scope, replay).form(max_files=cfg.max_instances, max_part_size=limit)
        uploads = [v for k, v in form.multi_items() if k == "image" and hasattr(v, "read")]
        if not uploads:
            raise ClientError(400, "no file in the form field 'image'; send -F image=@photo.jpg")
        images = [await u.read() for u in uploads]
        topk, threshold = custom_attributes(request, cfg.topk, server.threshold)
        answers = await server.answer(images, topk, threshold)
        return answers[0] if len(answers) == 1 else answers

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs():
        return HTMLResponse(DOCS_PAGE.read_text(encoding="utf-8"))

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics():
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _error(request: Request, exc: ClientError) -> JSONResponse:
    """``{"error": ...}`` everywhere; on the Runtime API route, also SageMaker's error shapes so that
    boto3 raises the right exception (and does not retry a client's bad input)."""
    headers = dict(exc.headers)
    body: dict = {"error": exc.message}
    status = exc.status
    if request.url.path.startswith("/endpoints/"):
        headers["x-amzn-RequestId"] = str(uuid.uuid4())
        if status == 400 and "not found; this server answers" in exc.message:
            headers["x-amzn-ErrorType"] = "ValidationError"
            body.update({"__type": "ValidationError", "message": exc.message})
        elif status == 401:
            headers["x-amzn-ErrorType"] = "AccessDeniedException"
            body.update({"__type": "AccessDeniedException", "message": exc.message})
        elif status < 500:  # the model rejected the request: SageMaker's ModelError with the original
            headers["x-amzn-ErrorType"] = "ModelError"
            body.update({"__type": "ModelError", "message": f"Received client error ({status}) from model",
                         "OriginalStatusCode": status, "OriginalMessage": exc.message})
            status = 424
    return JSONResponse(body, status_code=status, headers=headers)


def app_from_env() -> FastAPI:
    """The app for ``uvicorn --factory`` worker processes (``--workers N``), configured by the parent."""
    import json

    return create_app(ServeConfig(**json.loads(os.environ["DOGBREED_SERVE_CONFIG"])))
