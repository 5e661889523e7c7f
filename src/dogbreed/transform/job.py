"""``dogbreed transform``: SageMaker Batch Transform's contract on this machine.

Every input file gets ``KEY.out`` holding what the endpoint would answer for it (the one inference
path: ``pipeline.payloads``/``record_images`` read it, ``pipeline.predict`` answers, ``render``
writes), or, where any record of it fails, no ``.out`` and a line in ``_failures.jsonl``. A rerun
with the same arguments skips the inputs whose ``.out`` exists (each is written whole or not at
all) and scores the rest: nothing twice, nothing lost.

How it runs (:class:`Scorer`): inputs are read and split on a thread pool, their images decoded on
another, a few batches ahead; the network takes them in batches across inputs on this thread; the
``.out`` files are written on a third pool. The Ray engine (``ray_engine.py``) runs a Scorer in
every actor.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields

from dogbreed import machine, registry
from dogbreed.batching import ordered
from dogbreed.errors import DogbreedError
from dogbreed.flags import check_choices, option
from dogbreed.runtime import backends, pipeline
from dogbreed.runtime.loading import LoadedModel
from dogbreed.runtime.pipeline import JSON_TYPE, JSONLINES_TYPE, Options, RequestError, Shape
from dogbreed.transform import filters, sources
from dogbreed.transform.sources import FAILURES, OUT_SUFFIX, Input, Output

log = logging.getLogger(__name__)

NONE, LINE = "None", "Line"  # SplitType, AssembleWith
SINGLE_RECORD, MULTI_RECORD = "SingleRecord", "MultiRecord"
LOCAL, RAY = "local", "ray"
DEFAULT_BATCH = 16
MAX_IMAGES_PER_INPUT = 1_000_000  # a JSON lines input may hold many records; the payload limit bounds each
FAILED_EXIT = 3  # the job finished, and some inputs failed
BY_SUFFIX = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
             ".json": JSON_TYPE, ".jsonl": JSONLINES_TYPE, ".jsonlines": JSONLINES_TYPE}


@dataclass
class TransformOptions:
    """``dogbreed transform``'s settings, named after CreateTransformJob's fields (its flags are
    generated from these)."""

    model: str = option(help="trained artifact (or its unpacked folder), s3://BUCKET/KEY.tar.gz, or models:/NAME@ALIAS", metavar="model.tar.gz")
    input: str = option(help="a folder, an s3://BUCKET/PREFIX, one file, or a manifest file (S3DataSource)", metavar="SRC")
    output: str = option(help="folder or s3://BUCKET/PREFIX that receives KEY.out per input (S3OutputPath)", metavar="DEST")
    data_type: str = option(sources.S3_PREFIX, "S3Prefix: every file under --input; ManifestFile: --input is a manifest "
                                               '[{"prefix": "s3://B/P/"}, "a.jpg", ...] (a .manifest file is read as one)',
                            choices=(sources.S3_PREFIX, sources.MANIFEST))
    content_type: str | None = option(None, "the inputs' media type (default: by file name: image/jpeg, image/png, ..., "
                                            "application/json; application/jsonlines with --split-type Line)")
    split_type: str = option(NONE, "None: each file is one request; Line: each line of a JSON lines file is one "
                                   "record (a base64 image, {\"b64\": ...} or {\"instances\": [...]})", choices=(NONE, LINE))
    batch_strategy: str = option(MULTI_RECORD, "with --split-type Line: SingleRecord answers each record alone, "
                                               "MultiRecord several per request up to --max-payload-mb",
                                 choices=(SINGLE_RECORD, MULTI_RECORD))
    max_payload_mb: float = option(6.0, "largest record (and MultiRecord request), in MB; a larger record fails its input")
    accept: str | None = option(None, "the answers' media type: application/json or application/jsonlines (default: "
                                      "jsonlines with --split-type Line, else json)")
    assemble_with: str | None = option(None, "None: the answers of an input's requests run together; Line: each ends "
                                             "with a newline (default: Line with --split-type Line, else None)")
    join_source: str = option(NONE, "Input: each answer joined to its input record, as SageMakerOutput in an object "
                                    "(JSON records, --split-type Line)", choices=(NONE, "Input"))
    input_filter: str = option("$", "JSONPath of the record the model gets, e.g. $.image (JSON records)")
    output_filter: str = option("$", "JSONPath of what is written per record, e.g. $['id','SageMakerOutput'] (JSON records)")
    shard: str | None = option(None, "K/N: only the inputs of shard K of N, chosen by key, so N copies split the job "
                                     "(ShardedByS3Key)", metavar="K/N")
    engine: str = option(LOCAL, "local: this process; ray: a Ray cluster's actors (pip install 'dogbreed[ray]')",
                         choices=(LOCAL, RAY))
    ray_address: str | None = option(None, "the Ray cluster for --engine ray (default: a local one, started for the job)",
                                     metavar="ADDRESS")
    ray_actors: int | None = option(None, "model copies for --engine ray (default: one per 2 CPUs the cluster has)")
    backend: str = option(backends.AUTO, "how the network runs: auto times every backend the artifact has and takes "
                                         "the fastest; eager, bf16, torchscript, onnx, int8 force one",
                          choices=backends.CHOICES)
    batch_size: int = option(DEFAULT_BATCH, "images the network takes at once, across inputs")

    def validate(self) -> "TransformOptions":
        check_choices(self, as_flags=True)
        if self.assemble_with is None:
            self.assemble_with = LINE if self.split_type == LINE else NONE
        if self.assemble_with not in (NONE, LINE):
            raise DogbreedError(f"--assemble-with {self.assemble_with!r} is not valid; choose one of: None, Line")
        if not 0 < self.max_payload_mb <= 100:
            raise DogbreedError(f"--max-payload-mb must be over 0 and at most 100, got {self.max_payload_mb:g}")
        if self.batch_size < 1:
            raise DogbreedError("--batch-size must be at least 1")
        if self.ray_actors is not None and self.ray_actors < 1:
            raise DogbreedError("--ray-actors must be at least 1")
        try:
            self.accept = pipeline.negotiate(self.accept, JSONLINES_TYPE if self.split_type == LINE else JSON_TYPE)
        except RequestError:
            raise DogbreedError(f"--accept {self.accept!r}: answers are application/json or application/jsonlines") from None
        if self.content_type is not None:
            try:
                self.content_type = pipeline.content_type(self.content_type)
            except RequestError:
                raise DogbreedError(f"--content-type {self.content_type!r} is not one the model reads; use one of "
                                    f"{', '.join(pipeline.CONTENT_TYPES)}") from None
            if self.split_type == LINE and self.content_type not in pipeline.JSONLINES_TYPES:
                raise DogbreedError("--split-type Line reads JSON lines: leave --content-type out, or give application/jsonlines")
        for name in ("input_filter", "output_filter"):
            try:
                filters.compile_path(getattr(self, name), "--" + name.replace("_", "-"))
            except ValueError as exc:
                raise DogbreedError(str(exc)) from None
        processing = [f"--{f}" for f, on in (("input-filter", self.input_filter.strip() != "$"),
                                             ("output-filter", self.output_filter.strip() != "$"),
                                             ("join-source", self.join_source != NONE)) if on]
        if processing and self.split_type != LINE:
            raise DogbreedError(f"{processing[0]} works on JSON records: add --split-type Line (an image file has no fields)")
        if self.shard is not None:
            sources.parse_shard(self.shard)
        return self

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Request:
    """One invocation's worth of an input: its images, their shape, and (when joining) the input
    records the answers join."""

    images: list[bytes]
    shape: Shape
    records: list | None = None


@dataclass
class Work:
    """One input on its way through the job."""

    input: Input
    requests: list[Request] = field(default_factory=list)
    failure: str | None = None
    answers: list[list] = field(default_factory=list)
    remaining: int = 0

    @property
    def images(self) -> int:
        return sum(len(r.images) for r in self.requests)

    @property
    def records(self) -> int:
        return sum(len(r.shape.records) for r in self.requests)


@dataclass
class Tally:
    """What a run of :meth:`Scorer.run` did."""

    written: int = 0
    records: int = 0
    images: int = 0
    failures: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    nodes: int = 1  # machines that scored (the Ray engine's)


class Scorer:
    """Scores inputs with one loaded model and writes their ``.out`` files to ``output``."""

    def __init__(self, model: LoadedModel, opts: TransformOptions, output: Output):
        self.model, self.opts, self.output = model, opts, output
        self.options = Options.of(model)
        self.max_payload = int(opts.max_payload_mb * 1024 * 1024)
        self.input_filter = filters.compile_path(opts.input_filter, "--input-filter")
        self.output_filter = filters.compile_path(opts.output_filter, "--output-filter")
        self.processing = opts.join_source != NONE or not self.output_filter.identity
        self.separator = "\n" if opts.assemble_with == LINE else ""
        self.cpus = max(1, machine.available_cpus())

    # --- one input: read, split, filter ---------------------------------------------------------

    def prepare(self, inp: Input) -> Work:
        work = Work(inp)
        try:
            data = inp.read()
        except (OSError, DogbreedError) as exc:
            work.failure = f"cannot read it: {exc}"
            return work
        try:
            work.requests = self._lines(data) if self.opts.split_type == LINE else self._whole(inp, data)
        except (RequestError, filters.FilterError) as exc:
            work.failure, work.requests = str(exc), []
        work.answers = [[None] * len(r.images) for r in work.requests]
        work.remaining = work.images
        return work

    def _whole(self, inp: Input, data: bytes) -> list[Request]:
        if len(data) > self.max_payload:
            raise RequestError(f"{_mb(len(data))} is over --max-payload-mb {self.opts.max_payload_mb:g}")
        ctype = self.opts.content_type or BY_SUFFIX.get(inp.suffix, "application/x-image")
        images, shape = pipeline.payloads(data, ctype, MAX_IMAGES_PER_INPUT)
        return [Request(images, shape)]

    def _lines(self, data: bytes) -> list[Request]:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError("not UTF-8 text, so not JSON lines (--split-type Line)") from None
        requests, current, size = [], None, 0
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            where = f"line {number}"
            length = len(line.encode()) + 1
            if length > self.max_payload:
                raise RequestError(f"{where}: the record is {_mb(length)}, over --max-payload-mb {self.opts.max_payload_mb:g}")
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise RequestError(f"{where}: malformed JSON") from None
            try:
                picked = self.input_filter(record)
            except filters.FilterError as exc:
                raise RequestError(f"{where}: --input-filter {self.input_filter.text}: {exc}") from None
            images, count = pipeline.record_images(picked, where)
            single = self.opts.batch_strategy == SINGLE_RECORD
            if current is None or single or size + length > self.max_payload:
                current, size = {"images": [], "records": [], "numbers": [], "values": []}, 0
                requests.append(current)
            current["images"] += images
            current["records"].append(count)
            current["numbers"].append(number)
            current["values"].append(record)
            size += length
        if not requests:
            raise RequestError("no records: every line is blank")
        return [Request(r["images"], Shape(tuple(r["records"]), True, tuple(r["numbers"])),
                        r["values"] if self.processing else None) for r in requests]

    # --- one input's answers to its .out ---------------------------------------------------------

    def render(self, work: Work) -> bytes:
        parts = []
        for request, answers in zip(work.requests, work.answers):
            if not self.processing:
                parts.append(pipeline.render(answers, request.shape, self.opts.accept) + self.separator)
                continue
            items = []
            for n, (record, value) in enumerate(zip(request.records, request.shape.group(answers))):
                try:
                    joined = filters.join(record, value) if self.opts.join_source != NONE else value
                    items.append(self.output_filter(joined))
                except filters.FilterError as exc:
                    raise RequestError(f"line {request.shape.line_numbers[n]}: {exc}") from None
            parts.append(pipeline.dumps(items, request.shape, self.opts.accept) + self.separator)
        return "".join(parts).encode()

    # --- many inputs --------------------------------------------------------------------------------

    def run(self, inputs: list[Input], on_done: Callable[[Work], None] | None = None) -> Tally:
        """Score ``inputs`` and write their ``.out`` files; ``on_done(work)`` hears each input as it
        ends (written or failed)."""
        tally, started = Tally(), time.perf_counter()
        writes: list[tuple[Work, Future]] = []
        batch: list[tuple[Work, int, int, object]] = []

        def finish(work: Work) -> None:
            if work.failure is None:
                try:
                    body = self.render(work)
                except RequestError as exc:
                    work.failure = str(exc)
                else:
                    writes.append((work, writer.submit(self.output.write, work.input.key + OUT_SUFFIX, body)))
                    return
            tally.failures.append({"input": work.input.location, "key": work.input.key, "reason": work.failure})
            if on_done:
                on_done(work)

        def flush() -> None:
            live = [(w, r, k, px) for w, r, k, px in batch if w.failure is None]
            if live:
                answers = pipeline.predict(self.model, [px for *_, px in live], self.options)
                tally.images += len(live)
                for (work, r, k, _), answer in zip(live, answers):
                    work.answers[r][k] = answer
            for work, *_ in batch:
                work.remaining -= 1
                if work.remaining == 0:
                    finish(work)
            batch.clear()

        def decode(slot):
            work, r, k, data = slot
            if r < 0 or work.failure is not None:  # a marker, or an input already failed: nothing to decode
                return slot
            try:
                where = work.requests[r].shape.where(k)
                return work, r, k, pipeline.decode(self.model, data, where=where, name=work.input.key)
            except RequestError as exc:
                return work, r, k, exc

        with ThreadPoolExecutor(self.cpus, thread_name_prefix="read") as readers, \
                ThreadPoolExecutor(self.cpus, thread_name_prefix="decode") as decoders, \
                ThreadPoolExecutor(2, thread_name_prefix="write") as writer:
            prepared = ordered(inputs, self.prepare, readers, ahead=2 * self.cpus)
            for work, r, k, pixels in ordered(_slots(prepared), decode, decoders, ahead=3 * self.opts.batch_size):
                if r < 0:  # an input that failed before it had images, or had none
                    finish(work)
                    continue
                if isinstance(pixels, RequestError):
                    work.failure = work.failure or str(pixels)
                batch.append((work, r, k, pixels))
                if len(batch) >= self.opts.batch_size:
                    flush()
                self._collect(writes, tally, on_done, wait=False)
            flush()
            self._collect(writes, tally, on_done, wait=True)
        tally.seconds = time.perf_counter() - started
        return tally

    def _collect(self, writes: list, tally: Tally, on_done, *, wait: bool) -> None:
        """Account for the ``.out`` writes that ended (all of them, with ``wait``)."""
        while writes and (wait or writes[0][1].done()):
            work, future = writes.pop(0)
            try:
                future.result()
            except (OSError, DogbreedError) as exc:
                work.failure = f"cannot write its .out: {exc}"
                tally.failures.append({"input": work.input.location, "key": work.input.key, "reason": work.failure})
            else:
                tally.written += 1
                tally.records += work.records
            if on_done:
                on_done(work)


def load_model(opts: TransformOptions, images: int | None = None) -> LoadedModel:
    """The artifact on ``opts.backend`` (``auto``: the fastest here, timed at the job's batch size, in
    a race no longer than ``images`` (the inputs, at least one image each) can pay back),
    loaded for speed as the server loads it (a Ray actor forced onto the backend the driver chose
    runs the same network the race timed)."""
    from dogbreed.artifact import load_artifact

    model = load_artifact(registry.model_file(opts.model), backend=opts.backend, batch_sizes=(opts.batch_size,),
                          name=opts.model, images=images, fused=True)
    if model.selection is not None:
        log.info("%s", model.selection.line())
    return model


def _slots(prepared: Iterator[Work]):
    """Each image of each input as (work, request, position, bytes); an input with none (it failed,
    or held no records) as one (work, -1, -1, None)."""
    for work in prepared:
        if work.failure is not None or work.remaining == 0:
            yield work, -1, -1, None
            continue
        for r, request in enumerate(work.requests):
            for k, data in enumerate(request.images):
                yield work, r, k, data


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB"


def failures_name(shard: str | None) -> str:
    """``_failures.jsonl``, one per shard when sharded (N copies write beside each other)."""
    if shard is None:
        return FAILURES
    k, n = sources.parse_shard(shard)
    return FAILURES.replace(".jsonl", f"-{k}-of-{n}.jsonl")
