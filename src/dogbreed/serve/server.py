"""The server's state: the loaded model, its one model thread, the decode pool, the batcher and
the metrics. Routes call :meth:`Server.answer`; everything it does is a step of the inference
pipeline (``dogbreed.runtime.pipeline``) on the right thread.

Every torch computation happens on one thread, the model thread: loading, warm-up, normalising and
the forward pass. Decode threads do PIL work only; the event loop only awaits. On CPU each thread
that runs a parallel torch operation gets its own OpenMP team, and once the teams hold more threads
than there are cores libgomp stops spin-waiting between operations: on 2 cores a lone forward pass
took 53 ms instead of 37 (benchmarks/thread_teams.py; tests/serve/test_threads.py holds this).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from dogbreed import machine
from dogbreed.artifact import load_artifact
from dogbreed.capture.writer import RESULTS, CaptureWriter, parse_modes
from dogbreed.runtime import pipeline
from dogbreed.runtime.loading import LoadedModel
from dogbreed.runtime.pipeline import Options
from dogbreed.serve.batcher import Batcher, Overloaded, TooLarge
from dogbreed.serve.config import ServeConfig
from dogbreed.serve.errors import ClientError

log = logging.getLogger(__name__)


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
        self.backend = Gauge("dogbreed_backend_info", "The backend the model runs on (1), and the one asked for",
                             ["backend", "asked"], registry=self.registry)
        self.capture = Counter("dogbreed_capture_records", "Data capture records by result: captured, not_sampled, "
                               "dropped_queue_full, dropped_disk_full, failed", ["result"], registry=self.registry)
        self.backend_rate = Gauge("dogbreed_backend_images_per_second", "What --backend auto measured at start",
                                  ["backend", "batch_size"], registry=self.registry)

    def describe_backend(self, model: LoadedModel, asked: str) -> None:
        self.backend.labels(model.backend, asked).set(1)
        for name, rates in (model.selection.measured if model.selection else {}).items():
            for batch, rate in rates.items():
                self.backend_rate.labels(name, str(batch)).set(rate)


class Server:
    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.metrics = Metrics()
        self.model: LoadedModel | None = None
        self.defaults: Options | None = None  # the artifact's top-k and threshold, or the flags'
        self.batcher: Batcher | None = None
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.decode_pool = ThreadPoolExecutor(max_workers=machine.available_cpus(), thread_name_prefix="decode")
        self.load_seconds = 0.0
        self.ready = False
        self.capture: CaptureWriter | None = None
        if cfg.capture:
            self.capture = CaptureWriter(cfg.capture, cfg.name, percent=cfg.capture_percent,
                                         modes=parse_modes(cfg.capture_mode), max_disk_percent=cfg.capture_max_disk,
                                         on_result=lambda result, n: self.metrics.capture.labels(result).inc(n))
            for result in RESULTS:  # every count shows in /metrics from the start, at 0
                self.metrics.capture.labels(result)

    def load(self) -> LoadedModel:
        """Load the artifact on the model thread, waiting for it (``dogbreed serve`` calls this before
        it listens, so that a bad artifact is a one-line error)."""
        return self.model_thread.submit(self._load).result()

    def _load(self) -> LoadedModel:
        if self.model is None:
            started = time.perf_counter()
            self.model = load_artifact(self.cfg.model, backend=self.cfg.backend, budget_s=self.cfg.backend_budget_s,
                                       batch_sizes=tuple(sorted({1, self.cfg.max_batch_size})))
            self.metrics.describe_backend(self.model, self.cfg.backend)
            self.defaults = Options.of(self.model).override(self.cfg.topk, self.cfg.threshold, self.cfg.keep)
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
        if self.capture:
            self.capture.start()
        seconds = self.load_seconds + time.perf_counter() - started
        self.metrics.load.set(seconds)
        self.ready = True
        log.info("model %s loaded and warmed in %.2fs (backend %s, %s)", self.cfg.model, seconds, self.model.backend,
                 self.model.device)

    async def stop(self) -> None:
        self.ready = False
        if self.batcher:
            await self.batcher.stop()
        if self.capture:  # what is queued is written (and uploaded) before the process ends
            await asyncio.get_running_loop().run_in_executor(None, self.capture.close)
        self.model_thread.shutdown(wait=False, cancel_futures=True)
        self.decode_pool.shutdown(wait=False, cancel_futures=True)

    def _warm(self) -> None:
        """First calls are slow: pay for them before /ping says ready."""
        size = self.model.preset.crop_size
        self._predict([(torch.zeros(3, size, size, dtype=torch.uint8), self.defaults)] * self.cfg.max_batch_size)

    def _predict(self, items: list[tuple[torch.Tensor, Options]]) -> list[dict]:
        """The model thread's whole job: a batch of (pixels, options), from any requests, to answers."""
        return pipeline.predict(self.model, [pixels for pixels, _ in items], [opts for _, opts in items])

    def check_ready(self) -> None:
        if not self.ready:
            raise ClientError(503, "the model is still loading", {"Retry-After": "1"}, kind="service")

    async def answer(self, images: list[bytes], shape: pipeline.Shape, options: Options) -> list[dict]:
        """Decode in parallel off the event loop, then batch with other requests' images."""
        loop = asyncio.get_running_loop()

        def decode(i: int, data: bytes) -> torch.Tensor:
            return pipeline.decode(self.model, data, max_pixels=self.cfg.max_pixels, where=shape.where(i))

        self.batcher.incoming += 1
        try:
            pixels = await asyncio.gather(*(loop.run_in_executor(self.decode_pool, decode, i, b)
                                            for i, b in enumerate(images)))
        finally:
            self.batcher.incoming -= 1
        try:
            return await asyncio.wait_for(self.batcher.submit([(p, options) for p in pixels]), self.cfg.timeout_s)
        except TooLarge as exc:
            raise ClientError(413, f"{exc}; send fewer images per request") from None
        except Overloaded as exc:
            raise ClientError(503, f"server busy: {exc}; retry shortly", {"Retry-After": "1"}, kind="service") from None
        except asyncio.TimeoutError:
            raise ClientError(504, f"no answer within {self.cfg.timeout_s:g}s; the server is overloaded",
                              kind="service") from None
