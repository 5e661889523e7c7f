"""The server keeps every torch computation on its one model thread.

On CPU each thread that runs a parallel torch operation gets its own OpenMP team; once the teams
hold more threads than there are cores, libgomp stops spin-waiting and a lone forward pass slows by
half (benchmarks/RESULTS.md). A team shows up as threads the process did not otherwise start, so
the test counts threads in a fresh interpreter: after loading, warming, decoding concurrently and
batching, the only new ones may be the model thread, its OpenMP team and the decode pool.
"""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import asyncio, os, sys
    import torch
    from dogbreed.runtime import pipeline
    from dogbreed.runtime.pipeline import Options
    from dogbreed.serve import ServeConfig
    from dogbreed.serve.server import Server

    def threads():
        return len(os.listdir("/proc/self/task"))

    before = threads()
    server = Server(ServeConfig(model=sys.argv[1], max_batch_size=2, max_delay_ms=20))
    server.load()

    async def serve_some():
        await server.start()
        photos = [open(p, "rb").read() for p in sys.argv[2:]]
        options = Options(topk=3, threshold=0.5)
        await asyncio.gather(*(server.answer([b], pipeline.ONE, options) for b in photos))  # decoded concurrently, batched
        await server.answer(photos[:2], pipeline.Shape.listed(2), options)
        started = 1 + (torch.get_num_threads() - 1) + len(server.decode_pool._threads)
        after = threads()
        await server.stop()
        return after - before, started

    print(*asyncio.run(serve_some()))
''')


def test_torch_runs_on_the_model_thread_only(tmp_path, samples):
    from dogbreed.artifact import model_meta, write_artifact
    from dogbreed.data.layout import Labels
    from dogbreed.model import build_model, eval_preset

    # 224-pixel crops: a tiny preset's tensors are too small for torch to parallelise at all.
    labels = Labels([f"{i:03d}.Breed" for i in range(1, 4)])
    model, _ = build_model("resnet18", 3, pretrained=False)
    artifact = write_artifact(tmp_path / "model.tar.gz", model.eval(), labels,
                              model_meta("resnet18", labels, eval_preset("resnet18")))
    photos = sorted(samples.glob("*.jpg"))[:5]
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(artifact), *map(str, photos)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    new, expected = map(int, out.stdout.split())
    assert new == expected, f"{new} new threads, expected {expected}: a thread other than the model thread ran torch in parallel"
