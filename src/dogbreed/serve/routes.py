"""The app: SageMaker's container routes (/ping, /invocations), the SageMaker Runtime API
(/endpoints/{name}/invocations, for boto3), /predict for people, a web page, /docs and /metrics."""

from __future__ import annotations

import base64
import json
import time
import uuid
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dogbreed.capture import records
from dogbreed.runtime import pipeline
from dogbreed.runtime.pipeline import RequestError
from dogbreed.serve.config import ServeConfig
from dogbreed.serve.errors import ClientError, add_error_handlers, error_response
from dogbreed.serve.requests import authorized, read_body
from dogbreed.serve.server import Server

PAGE = Path(__file__).with_name("page.html")
DOCS_PAGE = Path(__file__).with_name("docs.html")
# health, Batch Transform's parameters, static pages and the spec; the page's calls carry the key
OPEN_PATHS = ("/ping", "/execution-parameters", "/", "/docs", "/openapi.json")
ATTRIBUTES_HEADER = "x-amzn-sagemaker-custom-attributes"


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
    add_error_handlers(app)

    @app.middleware("http")
    async def guard_and_observe(request: Request, call_next):
        started = time.perf_counter()
        if request.url.path not in OPEN_PATHS and not authorized(request, cfg.api_key):
            response = error_response(request, ClientError(401, "missing or wrong API key; send Authorization: Bearer KEY",
                                                           {"WWW-Authenticate": "Bearer"}, kind="access"))
        else:
            response = await call_next(request)
        path = getattr(request.scope.get("route"), "path", "other")
        server.metrics.requests.labels(path, str(response.status_code)).inc()
        server.metrics.latency.labels(path).observe(time.perf_counter() - started)
        return response

    # One route per method: a route's operation id is its function and path, so one route answering
    # GET and HEAD gave the spec the same id twice (and a "Duplicate Operation ID" warning).
    @app.get("/ping", summary="Health: 200 once the model is loaded and warmed, 503 before")
    @app.head("/ping", summary="Health, without a body (load balancers' checks)")
    async def ping():
        if not server.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ok"}

    @app.get("/execution-parameters", summary="Batch Transform: the concurrency, strategy and payload this container suits")
    async def execution_parameters():
        return cfg.execution_parameters()

    async def invoke(request: Request) -> Response:
        """The pipeline's steps in the order that refuses a bad request before reading its body."""
        server.check_ready()
        ctype = pipeline.content_type(request.headers.get("content-type"))
        media_type = pipeline.negotiate(request.headers.get("accept"), cfg.default_accept, image=True)
        options = pipeline.for_answer(pipeline.custom_attributes(request.headers.get(ATTRIBUTES_HEADER), server.defaults,
                                                                 server.model), media_type)
        inference_id = caller_inference_id(request)
        body = await read_body(request, cfg.max_body_bytes)
        with captured(server, inference_id, (body, request.headers.get("content-type") or ctype)) as exchange:
            images, shape = pipeline.payloads(body, ctype, cfg.max_instances)
            answers = await server.answer(images, shape, options)
            return exchange.answered(Response(pipeline.render(answers, shape, media_type), media_type=media_type))

    @app.post("/invocations", summary="SageMaker container contract: raw image bytes (or JSON instances) in, top-k out")
    async def invocations(request: Request):
        return await invoke(request)

    @app.post("/endpoints/{name}/invocations", summary="SageMaker Runtime InvokeEndpoint (boto3's sagemaker-runtime)")
    async def runtime_invoke(name: str, request: Request):
        if name != cfg.name:
            raise ClientError(400, f"Endpoint {name} not found; this server answers to {cfg.name!r}", kind="validation")
        response = await invoke(request)
        response.headers["x-Amzn-Invoked-Production-Variant"] = "AllTraffic"
        response.headers["x-amzn-RequestId"] = str(uuid.uuid4())
        return response

    @app.post("/predict", summary="Multipart upload for people and the web page: curl -F image=@dog.jpg")
    async def predict(request: Request):
        server.check_ready()
        body = await read_body(request, cfg.max_body_bytes)
        if not body:
            raise ClientError(400, "empty body; send a multipart form with the photo in the field 'image' "
                                   "(curl -F image=@photo.jpg)")

        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}

        form = await Request(request.scope, replay).form(max_files=cfg.max_instances, max_part_size=cfg.max_body_bytes)
        uploads = [v for k, v in form.multi_items() if k == "image" and hasattr(v, "read")]
        if not uploads:
            raise ClientError(400, "no file in the form field 'image'; send -F image=@photo.jpg")
        images = [await u.read() for u in uploads]
        options = pipeline.custom_attributes(request.headers.get(ATTRIBUTES_HEADER), server.defaults, server.model)
        # captured as what /invocations would have been sent: the image itself, or JSON instances
        sent = ((images[0], uploads[0].content_type or "application/octet-stream") if len(images) == 1 else
                (json.dumps({"instances": [{"b64": base64.b64encode(i).decode()} for i in images]}).encode(),
                 pipeline.JSON_TYPE))
        with captured(server, caller_inference_id(request), sent) as exchange:
            answers = await server.answer(images, pipeline.Shape.listed(len(images)) if len(images) > 1 else pipeline.ONE,
                                          options)
            return exchange.answered(JSONResponse(answers if len(answers) > 1 else answers[0]))

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


def caller_inference_id(request: Request) -> str | None:
    """The caller's ``X-Amzn-SageMaker-Inference-Id`` (boto3's ``InferenceId=``), which a captured
    record keeps for joining ground truth later: 1 to 64 printable characters, as SageMaker allows."""
    value = request.headers.get(records.INFERENCE_ID_HEADER)
    if value is None:
        return None
    if not 0 < len(value) <= records.MAX_INFERENCE_ID or not value.isprintable() or value[0].isspace():
        raise ClientError(400, f"{records.INFERENCE_ID_HEADER} must be 1 to {records.MAX_INFERENCE_ID} printable "
                               f"characters, not starting with a space", kind="validation")
    return value


class Exchange:
    """One request on its way to the capture writer: :meth:`answered` records the answer (and tells
    the client the record's event id); a refusal of the request itself is recorded as its error."""

    def __init__(self, server: Server, event_id: str, inference_id: str | None, sent: tuple[bytes, str]):
        self.server, self.event_id, self.inference_id, self.sent = server, event_id, inference_id, sent

    def answered(self, response: Response) -> Response:
        self._submit(bytes(response.body), response.media_type or pipeline.JSON_TYPE)
        response.headers[records.EVENT_ID_HEADER] = self.event_id
        return response

    def refused(self, exc: ClientError) -> None:
        self._submit(json.dumps({"error": exc.message}).encode(), pipeline.JSON_TYPE)
        exc.headers[records.EVENT_ID_HEADER] = self.event_id

    def _submit(self, body: bytes, media_type: str) -> None:
        self.server.capture.submit(self.event_id, inference_id=self.inference_id, request=self.sent,
                                   response=(body, media_type))


@contextmanager
def captured(server: Server, inference_id: str | None, sent: tuple[bytes, str]):
    """The block that answers a request, captured when capture is on and samples this request.
    Requests the model refuses (a bad image, too many pixels) are captured with their error, so a
    monitor sees unreadable inputs; refusals that are the server's (busy, timed out) are not."""
    event_id = server.capture.sample() if server.capture else None
    if event_id is None:
        yield _NOT_CAPTURED
        return
    exchange = Exchange(server, event_id, inference_id, sent)
    try:
        yield exchange
    except RequestError as exc:
        refusal = ClientError(exc.status_code, exc.message)
        exchange.refused(refusal)
        raise refusal from None
    except ClientError as exc:
        if exc.kind == "model":
            exchange.refused(exc)
        raise


class _NotCaptured:
    @staticmethod
    def answered(response: Response) -> Response:
        return response


_NOT_CAPTURED = _NotCaptured()
