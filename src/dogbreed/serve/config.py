"""Every setting of ``dogbreed serve`` in one dataclass: its type, default and help (the flags are
generated from these fields, as ``dogbreed train``'s are from TrainConfig) and its validation."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from dogbreed.capture.writer import parse_modes
from dogbreed.errors import DogbreedError
from dogbreed.flags import check_choices, option
from dogbreed.runtime import backends
from dogbreed.runtime.pipeline import (
    ANSWER_TYPES,
    DEFAULT_ACCEPT_ENV,
    DEFAULT_KEEP,
    DEFAULT_MAX_INSTANCES,
    DEFAULT_THRESHOLD,
    DEFAULT_TOPK,
    JSON_TYPE,
    OptionError,
    Options,
    RequestError,
    negotiate,
)
from dogbreed.runtime.presets import DEFAULT_MAX_PIXELS

API_KEY_ENV = "DOGBREED_API_KEY"
ENDPOINT_NAME = re.compile(r"[A-Za-z0-9](-*[A-Za-z0-9]){0,62}")  # SageMaker's EndpointName pattern
LOOPBACK = ("127.0.0.1", "localhost", "::1")
DEFAULT_QUEUE_SIZE = 256
BATCH_TIMEOUT_S = 600.0  # SageMaker's limit on one invocation in a Batch Transform job (60 s in real time)
BATCH_MAX_INSTANCES = 256  # images in one MultiRecord body: 6 MB of photos is about a hundred
MULTI_RECORD, SINGLE_RECORD = "MULTI_RECORD", "SINGLE_RECORD"


@dataclass
class ServeConfig:
    model: str = option(help="trained artifact (or its unpacked folder), s3://BUCKET/KEY.tar.gz, or models:/NAME@ALIAS", metavar="model.tar.gz")
    name: str = option("dogbreed", "endpoint name /endpoints/NAME/invocations answers to")
    host: str = option("127.0.0.1", "address to bind; 0.0.0.0 exposes the server to the network")
    port: int = option(8080, "port; SageMaker's containers use 8080; 0 picks any free port and says which")
    workers: int = option(1, "server processes, each with its own model copy")
    max_batch_size: int = option(8, "most images run through the model at once; 8 is fastest on CPU, try more on GPU")
    max_delay_ms: float = option(5.0, "how long the first image of a batch waits for others")
    queue_size: int = option(DEFAULT_QUEUE_SIZE, "images that may wait; past it requests get 503 + Retry-After (given "
                                                 "alone, it lowers --max-instances to fit)")
    timeout_s: float = option(30.0, "a request waiting longer gets 504")
    max_body_mb: float = option(6.0, "largest request body, in MB; larger gets 413 (6 is SageMaker's limit)")
    max_pixels: int = option(DEFAULT_MAX_PIXELS, "largest image in pixels, checked before decoding; predict and training use the same")
    max_instances: int = option(DEFAULT_MAX_INSTANCES, "most images in one request (JSON instances or form files; "
                                                       "given alone, it raises --queue-size to fit)")
    topk: int | None = option(None, "breeds per answer; a request may ask otherwise with the topk= custom attribute "
                                    f"(default: the artifact's, {DEFAULT_TOPK})")
    threshold: float | None = option(None, "low_confidence below this top-1 probability; a request may ask otherwise "
                                           f"with threshold= (default: the artifact's, {DEFAULT_THRESHOLD:g})")
    keep: float | None = option(None, "share of known-breed images the not_a_dog threshold lets through; a request may "
                                      f"ask otherwise with keep= (default: the artifact's, {DEFAULT_KEEP:g})")
    backend: str = option("auto", "how the network runs: auto times every backend the artifact has at start and takes the "
                                  "fastest; eager (fp32), bf16, torchscript, onnx, int8 force one (all but eager need "
                                  "`dogbreed export`; bf16 and int8 run only where they passed their accuracy gate)",
                          choices=backends.CHOICES)
    backend_budget_s: float = option(backends.DEFAULT_BUDGET_S, "seconds --backend auto may spend choosing at start: "
                                                                "loading, warming up and timing the backends, all counted")
    capture: str | None = option(None, "record requests and answers in SageMaker Data Capture's files under this folder "
                                       "or s3://BUCKET/PREFIX: DEST/NAME/AllTraffic/yyyy/mm/dd/hh/*.jsonl "
                                       "(read by `dogbreed monitor run`)", metavar="DEST")
    capture_percent: float = option(100.0, "share of requests --capture records, 0 to 100")
    capture_mode: str = option("input,output", "what a captured record holds: input, output, or input,output")
    capture_max_disk: float = option(75.0, "percent of the capture disk's space past which records are dropped "
                                           "(and counted in /metrics) instead of written")
    api_key: str | None = option(None, "require Authorization: Bearer KEY on everything but /ping and the page "
                                       f"(default: ${API_KEY_ENV}, else none)")
    # Batch Transform's execution parameters, which GET /execution-parameters answers: set by a transform
    # job's SAGEMAKER_* variables (:func:`batch_settings`), never flags
    max_concurrent_transforms: int | None = field(default=None, metadata={"flag": False})
    batch_strategy: str | None = field(default=None, metadata={"flag": False})
    # the answer's type for a request without Accept (SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT), as SageMaker's containers
    default_accept: str = field(default=JSON_TYPE, metadata={"flag": False})

    @classmethod
    def from_flags(cls, given: dict, env: Mapping[str, str] | None = None) -> "ServeConfig":
        """The settings typed (``flags.given``) over the environment's (a Batch Transform job's
        SAGEMAKER_* variables: :func:`batch_settings`) over the defaults; the API key may come from
        the environment too, so that it stays out of the process list."""
        env = os.environ if env is None else env
        values = {**batch_settings(env, given), **given}
        if values.get("api_key") is None:
            values["api_key"] = env.get(API_KEY_ENV) or None
        # A request must fit in the queue: one of the two given alone moves the other's default, so
        # that only two typed values can contradict each other.
        if "queue_size" in given and "max_instances" not in given:
            values["max_instances"] = min(DEFAULT_MAX_INSTANCES, given["queue_size"])
        elif "max_instances" in given and "queue_size" not in given:
            values["queue_size"] = max(DEFAULT_QUEUE_SIZE, given["max_instances"])
        unused = [k for k in given if k.startswith("capture_")] if not values.get("capture") else []
        if unused:
            raise DogbreedError(f"--{unused[0].replace('_', '-')} needs --capture DEST (where to write the records)")
        return cls(**values).validate()

    def validate(self) -> "ServeConfig":
        """Each bad setting is one line naming its flag, before anything loads."""
        check_choices(self, as_flags=True, verdict="is not available")
        if not self.backend_budget_s > 0:
            raise DogbreedError("--backend-budget-s must be positive")
        for key in ("max_batch_size", "queue_size", "workers", "max_instances"):
            if getattr(self, key) < 1:
                raise DogbreedError(f"--{key.replace('_', '-')} must be at least 1")
        if self.max_instances > self.queue_size:
            raise DogbreedError(f"--max-instances {self.max_instances} is over --queue-size {self.queue_size}: a request of "
                                f"that many images could never be queued; raise --queue-size or lower --max-instances")
        if not 0 <= self.port <= 65535:
            raise DogbreedError(f"--port must be 0..65535 (0: any free port), got {self.port}")
        if len(self.name) > 63 or not ENDPOINT_NAME.fullmatch(self.name):
            raise DogbreedError(f"--name {self.name!r} is not an endpoint name: 1 to 63 letters, digits and hyphens, "
                                f"starting and ending with a letter or digit (SageMaker's rule)")
        if not self.max_body_mb > 0 or not self.timeout_s > 0 or self.max_pixels < 1 or not self.max_delay_ms >= 0:
            raise DogbreedError("--max-body-mb, --timeout-s and --max-pixels must be positive, --max-delay-ms at least 0")
        if not 0 <= self.capture_percent <= 100:
            raise DogbreedError(f"--capture-percent must be 0 to 100, got {self.capture_percent:g}")
        if not 0 < self.capture_max_disk <= 100:
            raise DogbreedError(f"--capture-max-disk must be over 0 and at most 100, got {self.capture_max_disk:g}")
        try:
            parse_modes(self.capture_mode)
        except ValueError as exc:
            raise DogbreedError(f"--capture-mode {exc}") from None
        try:
            Options().override(self.topk, self.threshold, self.keep)
        except OptionError as exc:
            raise DogbreedError(f"--{exc.field} {exc.problem}") from None
        return self

    def execution_parameters(self) -> dict:
        """What ``GET /execution-parameters`` answers a Batch Transform job (which its own request
        overrides): two requests in flight per worker, so one decodes while the other runs; JSON
        lines bodies of several records; the largest body, in whole MB."""
        return {"MaxConcurrentTransforms": self.max_concurrent_transforms or 2 * self.workers,
                "BatchStrategy": self.batch_strategy or MULTI_RECORD,
                "MaxPayloadInMB": max(1, int(self.max_body_mb))}

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def exposed(self) -> bool:
        """Reachable from other machines."""
        return self.host not in LOOPBACK

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def batch_settings(env: Mapping[str, str], given: dict) -> dict:
    """The settings a SageMaker Batch Transform job gives the container through its environment,
    for those not typed as flags (and ``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT``, the answer's type for
    a request that names none): ``SAGEMAKER_BATCH=true`` allows an invocation 600 s (SageMaker's
    batch limit) and a MultiRecord body up to 256 images; ``SAGEMAKER_MAX_PAYLOAD_IN_MB`` is the
    largest body; ``SAGEMAKER_BATCH_STRATEGY`` and ``SAGEMAKER_MAX_CONCURRENT_TRANSFORMS`` are
    reported back by ``/execution-parameters``. A bad value is one line naming its variable."""
    found: dict = {}
    if env.get("SAGEMAKER_BATCH", "").strip().lower() == "true":
        found["timeout_s"] = BATCH_TIMEOUT_S
        if "max_instances" not in given and "queue_size" not in given:
            found["max_instances"] = found["queue_size"] = BATCH_MAX_INSTANCES
    if (raw := env.get("SAGEMAKER_MAX_PAYLOAD_IN_MB")) is not None:
        try:
            mb = float(raw)
        except ValueError:
            mb = -1.0
        if not 0 < mb <= 100:
            raise DogbreedError(f"SAGEMAKER_MAX_PAYLOAD_IN_MB={raw!r} must be 1 to 100 (0, streaming, is not supported: "
                                f"set MaxPayloadInMB on the transform job)")
        found["max_body_mb"] = mb
    if (raw := env.get("SAGEMAKER_BATCH_STRATEGY")) is not None:
        strategy = raw.strip().upper().replace("-", "_")
        if strategy not in (MULTI_RECORD, SINGLE_RECORD):
            raise DogbreedError(f"SAGEMAKER_BATCH_STRATEGY={raw!r} must be {MULTI_RECORD} or {SINGLE_RECORD}")
        found["batch_strategy"] = strategy
    if (raw := env.get(DEFAULT_ACCEPT_ENV)) is not None:
        try:
            found["default_accept"] = negotiate(raw)
        except RequestError:
            raise DogbreedError(f"{DEFAULT_ACCEPT_ENV}={raw!r} must be {' or '.join(ANSWER_TYPES)}") from None
    if (raw := env.get("SAGEMAKER_MAX_CONCURRENT_TRANSFORMS")) is not None:
        if not raw.strip().isdigit() or int(raw) < 1:
            raise DogbreedError(f"SAGEMAKER_MAX_CONCURRENT_TRANSFORMS={raw!r} must be a whole number, at least 1")
        found["max_concurrent_transforms"] = int(raw)
    return {k: v for k, v in found.items() if k not in given}
