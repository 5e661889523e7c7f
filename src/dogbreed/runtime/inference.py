"""SageMaker's inference handlers (model_fn, input_fn, predict_fn, output_fn) for a dogbreed model.

This file is ``code/inference.py`` in every artifact, beside the modules it calls. SageMaker's
PyTorch container imports it on its own; each handler is a step of the one inference path
(``pipeline.py``) that ``dogbreed serve`` and ``dogbreed predict`` run too, so all three give the
same answers and the same errors. A refused request raises ``RequestError``, which SageMaker's
inference toolkit answers with its status (400, 406, 415) instead of 500.

Settings come from the container's environment (``PyTorchModel(env={...})``), over model.json's:
``DOGBREED_TOPK``, ``DOGBREED_THRESHOLD``, ``DOGBREED_MAX_INSTANCES``, ``DOGBREED_MAX_PIXELS``,
``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT`` (application/json, or application/jsonlines: one answer line
per record of a JSON lines request, what a Batch Transform job with ``AssembleWith=Line`` wants), and
``DOGBREED_BACKEND`` (default ``auto``: the fastest backend the artifact has that passed its gate,
timed when the model loads; or eager, bf16, torchscript, onnx, int8).
A request may change top-k and the threshold with SageMaker's custom attributes
(``CustomAttributes="topk=3,threshold=0.5"``), and ask for a heatmap of where the model looked
(``explain=1``, or ``Accept: image/png`` for the heatmap itself), as it may on ``dogbreed serve``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

try:
    from . import backends, pipeline
    from .loading import LoadedModel
    from .pipeline import DEFAULT_MAX_INSTANCES, Options
    from .presets import DEFAULT_MAX_PIXELS
except ImportError:  # loaded as a top-level module from an extracted artifact's code/ folder
    import backends  # type: ignore[no-redef]
    import pipeline  # type: ignore[no-redef]
    from loading import LoadedModel  # type: ignore[no-redef]
    from pipeline import DEFAULT_MAX_INSTANCES, Options  # type: ignore[no-redef]
    from presets import DEFAULT_MAX_PIXELS  # type: ignore[no-redef]

ATTRIBUTES_HEADER = "x-amzn-sagemaker-custom-attributes"
log = logging.getLogger(__name__)


@dataclass
class Handlers:
    """What model_fn loaded and the settings the other handlers apply (SageMaker passes input_fn
    no model, so it lives here)."""

    model: LoadedModel
    defaults: Options
    max_instances: int = DEFAULT_MAX_INSTANCES
    max_pixels: int = DEFAULT_MAX_PIXELS
    default_accept: str = pipeline.JSON_TYPE  # for a request without Accept (SageMaker's toolkit applies it first)


@dataclass
class Request:
    pixels: list[torch.Tensor]  # uint8, one per image
    shape: pipeline.Shape  # how the client sent them: one image, a list, JSON lines; the answer takes it
    options: Options


@dataclass
class Prediction:
    answers: list[dict]
    shape: pipeline.Shape


_HANDLERS: Handlers | None = None


def _env(name: str, cast: type):
    raw = os.environ.get(name)
    try:
        return None if raw is None else cast(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a valid {cast.__name__}") from None


def model_fn(model_dir: str) -> LoadedModel:
    global _HANDLERS
    model, selection = backends.select(model_dir, os.environ.get("DOGBREED_BACKEND", backends.AUTO), warn=log.warning)
    model.selection = selection
    log.info("%s", selection.line())
    topk, threshold = _env("DOGBREED_TOPK", int), _env("DOGBREED_THRESHOLD", float)
    try:
        defaults = Options.of(model).override(topk, threshold)
    except ValueError as exc:  # "topk must be 1..1000, got 0"
        raise ValueError(f"DOGBREED_TOPK or DOGBREED_THRESHOLD: {exc}") from None
    instances, pixels = _env("DOGBREED_MAX_INSTANCES", int), _env("DOGBREED_MAX_PIXELS", int)
    default_accept = pipeline.negotiate(os.environ.get(pipeline.DEFAULT_ACCEPT_ENV))
    _HANDLERS = Handlers(model, defaults, DEFAULT_MAX_INSTANCES if instances is None else instances,
                         DEFAULT_MAX_PIXELS if pixels is None else pixels, default_accept)
    return model


def input_fn(request_body: bytes | str, request_content_type: str | None, context=None) -> Request:
    """SageMaker's toolkit passes ``context`` (its request context) where the function takes it."""
    handlers = _loaded()
    images, shape = pipeline.payloads(request_body, pipeline.content_type(request_content_type), handlers.max_instances)
    pixels = [pipeline.decode(handlers.model, data, max_pixels=handlers.max_pixels, where=shape.where(i))
              for i, data in enumerate(images)]
    options = pipeline.custom_attributes(_header(context, ATTRIBUTES_HEADER), handlers.defaults, handlers.model)
    accept = _header(context, "accept")
    if accept:  # an image/png answer is the heatmap, which the prediction must make
        try:
            options = pipeline.for_answer(options, pipeline.negotiate(accept, handlers.default_accept, image=True))
        except pipeline.RequestError:
            pass  # output_fn refuses it, as the toolkit expects
    return Request(pixels, shape, options)


def _loaded() -> Handlers:
    if _HANDLERS is None:
        raise RuntimeError("model_fn has not run")
    return _HANDLERS


def predict_fn(input_data: Request, model: LoadedModel) -> Prediction:
    return Prediction(pipeline.predict(model, input_data.pixels, input_data.options), input_data.shape)


def output_fn(prediction: Prediction, accept: str | None) -> tuple[str | bytes, str]:
    """(body, content type): SageMaker's toolkit sends the content type we return."""
    media_type = pipeline.negotiate(accept, _loaded().default_accept, image=True)
    return pipeline.render(prediction.answers, prediction.shape, media_type), media_type


def _header(context, name: str) -> str | None:
    """A request header from SageMaker's request context (None without one)."""
    try:
        headers = context.request_processor[0].get_request_properties()
    except (AttributeError, IndexError, TypeError):
        return None
    for key, value in (headers or {}).items():
        if str(key).lower() == name:
            return value.decode() if isinstance(value, bytes) else value
    return None
