"""``dogbreed transform --engine ray``: the same job on a Ray cluster, past one machine.

Ray Data carries the list of inputs (``from_items``) to a pool of actors (``map_batches`` with an
``ActorPoolStrategy``); each actor loads the artifact once, on the backend the driver chose, and
runs a :class:`~dogbreed.transform.job.Scorer` on each batch of inputs it is handed: the same
reading, decoding, batching and ``.out`` writing as the local engine. The driver only tallies what
the actors report and writes ``_failures.jsonl``.

When a worker dies, Ray restarts its actor and hands the lost batch out again; an actor first
drops the inputs whose ``.out`` a previous attempt already wrote, so nothing is written twice and
nothing is lost (a ``.out`` exists whole or not at all).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from dogbreed import machine
from dogbreed.errors import DogbreedError
from dogbreed.transform.job import Scorer, Tally, TransformOptions, Work, load_model
from dogbreed.transform.sources import OUT_SUFFIX, Input, Output

log = logging.getLogger(__name__)
CPUS_PER_ACTOR = 2  # an actor's model runs its own threads: one copy per two CPUs keeps them busy
# network batches of inputs per call into an actor: each call fills its pipeline of reads and decodes from empty,
# and a batch lost with its worker is handed out again whole (its written inputs skipped)
INPUTS_PER_CALL = 16


class ScoringActor:
    """One model copy on a Ray worker (constructed once per actor by Ray Data)."""

    def __init__(self, opts: dict, backend: str):
        machine.keep_freed_memory()  # a Ray worker is a fresh interpreter: without it every batch faults its pages in again
        self.opts = TransformOptions(**{**opts, "backend": backend})
        model = load_model(self.opts)
        self.output = Output(self.opts.output)
        self.scorer = Scorer(model, self.opts, self.output)

    def __call__(self, batch: dict) -> dict:
        import ray

        inputs = [Input(str(k), str(loc)) for k, loc in zip(batch["key"], batch["location"])]
        rows: dict[str, list] = {"key": [], "status": [], "reason": [], "records": [], "images": [], "location": [], "node": []}
        node = ray.get_runtime_context().get_node_id()

        def report(work: Work, status: str | None = None) -> None:
            failed = work.failure is not None
            rows["key"].append(work.input.key)
            rows["location"].append(work.input.location)
            rows["status"].append(status or ("failed" if failed else "written"))
            rows["reason"].append(work.failure or "")
            rows["records"].append(0 if failed else work.records)
            rows["images"].append(0 if failed else work.images)
            rows["node"].append(node)

        todo = []
        for inp in inputs:  # a batch handed out again after a worker died: what it wrote stays written
            if self.output.exists(inp.key + OUT_SUFFIX):
                report(self.scorer.prepare(inp), "earlier")  # read again, not scored: its records and images counted
            else:
                todo.append(inp)
        if todo:
            self.scorer.run(todo, on_done=report)
        return rows


def run(opts: TransformOptions, todo: list[Input], on_input: Callable[[int], None] | None = None) -> tuple[Tally, str]:
    """Score ``todo`` on the cluster at ``opts.ray_address`` (a local one, started and stopped
    here, when None); ``on_input(images)`` hears each input as it ends."""
    try:
        import ray
    except ImportError:
        raise DogbreedError("--engine ray needs Ray: pip install 'dogbreed[ray]'") from None
    model = load_model(opts, images=len(todo))  # the backend race runs once, here, not in every actor
    backend = model.backend
    del model
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=opts.ray_address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        except ConnectionError as exc:
            raise DogbreedError(f"--ray-address {opts.ray_address}: cannot reach the Ray cluster ({exc})") from None
    try:
        return _run(ray, opts, todo, backend, on_input), backend
    finally:
        if started_here:
            ray.shutdown()


def _run(ray, opts: TransformOptions, todo: list[Input], backend: str, on_input) -> Tally:
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver draws its own
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its plan and timings at every run
    cpus = int(ray.cluster_resources().get("CPU", 1))
    actors = opts.ray_actors or max(1, cpus // CPUS_PER_ACTOR)
    per_actor = max(1, min(CPUS_PER_ACTOR, cpus // actors))
    items = [{"key": i.key, "location": i.location} for i in todo]
    per_call = max(1, INPUTS_PER_CALL * opts.batch_size)
    started = time.perf_counter()
    results = ray.data.from_items(items, override_num_blocks=-(-len(items) // per_call)).map_batches(  # a block a call
        ScoringActor, fn_constructor_kwargs={"opts": opts.to_dict(), "backend": backend},
        batch_size=per_call, batch_format="numpy", num_cpus=per_actor,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors, initial_size=actors))  # Ray Data restarts actors, retries tasks
    tally = Tally()
    seen: set[str] = set()
    nodes: set[str] = set()
    for row in results.iter_rows():
        key = str(row["key"])
        if key in seen:  # a batch that ran twice reports its inputs twice: count each once
            continue
        seen.add(key)
        nodes.add(str(row["node"]))
        if row["status"] == "failed":
            tally.failures.append({"input": str(row["location"]), "key": key, "reason": str(row["reason"])})
        else:
            tally.written += 1
            tally.records += int(row["records"])
            tally.images += int(row["images"])
        if on_input:
            on_input(int(row["images"]))
    tally.seconds = time.perf_counter() - started
    tally.nodes = len(nodes)  # that sent back results: a lost node's unread results went with it
    missing = {i.key for i in todo} - seen
    if missing:
        raise DogbreedError(f"the Ray job ended without {len(missing)} input(s), e.g. {sorted(missing)[0]}; rerun it: it "
                            f"scores only what has no .out")
    return tally

