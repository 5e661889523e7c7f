"""``dogbreed transform``: batch scoring with SageMaker Batch Transform's contract (``job.py``),
on this machine or on a Ray cluster (``ray_engine.py``); sources and outputs in ``sources.py``,
DataProcessing's JSONPath filters in ``filters.py``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tqdm import tqdm

from dogbreed import remote
from dogbreed.errors import DogbreedError
from dogbreed.transform import sources
from dogbreed.transform.job import FAILED_EXIT, RAY, Scorer, Tally, TransformOptions, failures_name, load_model
from dogbreed.transform.sources import OUT_SUFFIX, Output

__all__ = ["TransformOptions", "run"]
log = logging.getLogger(__name__)


def run(opts: TransformOptions, *, progress: bool = False) -> int:
    """The whole job: list, shard, skip what is done, score the rest, write ``_failures.jsonl``,
    and say what happened in one line. The exit code: 0, or :data:`FAILED_EXIT` where inputs failed."""
    opts.validate()
    _check_apart(opts.input, opts.output)
    found = sources.inputs(opts.input, sources.MANIFEST if opts.data_type == sources.MANIFEST else None)
    mine = sources.shard(found, sources.parse_shard(opts.shard) if opts.shard else None)
    output = Output(opts.output)
    done = output.done()
    todo = [i for i in mine if i.key + OUT_SUFFIX not in done]
    skipped = len(mine) - len(todo)
    if skipped:
        log.info("%d of %d input(s) already have their .out in %s: skipped", skipped, len(mine), opts.output)
    bar = tqdm(total=len(todo), desc="transform", unit="file", disable=not progress or not todo, dynamic_ncols=True)
    images = 0

    def tick(n: int) -> None:
        nonlocal images
        images += n
        bar.update()
        if bar.format_dict["elapsed"] > 0:
            bar.set_postfix_str(f"{images / bar.format_dict['elapsed']:.1f} img/s", refresh=False)

    try:
        if not todo:
            tally, backend = Tally(), "-"
        elif opts.engine == RAY:
            from dogbreed.transform import ray_engine

            tally, backend = ray_engine.run(opts, todo, on_input=tick)
        else:
            model = load_model(opts, images=len(todo))
            tally = Scorer(model, opts, output).run(todo, on_done=lambda w: tick(0 if w.failure else w.images))
            backend = model.backend
    finally:
        bar.close()
    _write_failures(output, failures_name(opts.shard), tally)
    rate = tally.images / tally.seconds if tally.seconds else 0.0
    shard = f" (shard {opts.shard})" if opts.shard else ""
    line = (f"transform{shard}: {len(mine)} input(s), {skipped} already done, {tally.written} written, "
            f"{len(tally.failures)} failed; {tally.records} record(s), {tally.images} image(s) in {tally.seconds:.1f}s "
            f"({rate:.1f} img/s, backend {backend}, engine {opts.engine}"
            f"{f' on {tally.nodes} node(s)' if opts.engine == RAY else ''})")
    print(line)
    if tally.failures:
        log.error("%d input(s) failed, each named with its reason in %s; fix them and rerun the same command: it "
                  "scores only what has no .out", len(tally.failures), output.url(failures_name(opts.shard)))
        return FAILED_EXIT
    return 0


def _write_failures(output: Output, name: str, tally: Tally) -> None:
    """This run's failures, one JSON line each, sorted by key; no file when none failed (an older
    one goes: what it named has been scored, or fails again and is named again)."""
    if not tally.failures:
        output.remove(name)
        return
    lines = [json.dumps(f) for f in sorted(tally.failures, key=lambda f: f["key"])]
    output.write(name, ("\n".join(lines) + "\n").encode())


def _check_apart(source: str, dest: str) -> None:
    """An output inside the input would be read as input by the next run."""
    if remote.is_s3(source) != remote.is_s3(dest):
        return
    if remote.is_s3(source):
        inside = (dest.rstrip("/") + "/").startswith(source.rstrip("/") + "/")
    else:
        src = Path(source).resolve()
        inside = src.is_dir() and (Path(dest).resolve() == src or src in Path(dest).resolve().parents)
    if inside and not source.endswith(".manifest"):
        raise DogbreedError(f"--output {dest} is inside --input {source}: a rerun would read the .out files as inputs; "
                            f"pick an output outside it")
