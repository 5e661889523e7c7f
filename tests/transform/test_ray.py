"""``dogbreed transform --engine ray`` on a real Ray cluster of two nodes on this machine: one
node is killed mid-job, and the job still ends with every input scored once."""

import json
import re
import subprocess
import sys
import time

import pytest
from PIL import Image
from ray.cluster_utils import Cluster

INPUTS = 240


@pytest.fixture
def cluster(tmp_path):
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        worker = cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes(timeout=120)
        yield cluster, worker
    finally:
        cluster.shutdown()


def test_a_job_on_two_nodes_survives_losing_one_and_scores_every_input_once(trained_run, cluster, tmp_path):
    cluster, worker = cluster
    src, dest = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(INPUTS):
        Image.new("RGB", (320, 240), (i % 256, (5 * i) % 256, 40)).save(src / f"{i:03d}.jpg")
    (src / "broken.jpg").write_bytes(b"no image here")
    job = subprocess.Popen([sys.executable, "-m", "dogbreed", "transform", "--model", str(trained_run.artifact),
                            "--input", str(src), "--output", str(dest), "--engine", "ray", "--ray-address", cluster.address,
                            "--ray-actors", "2", "--backend", "eager", "--batch-size", "1", "--no-progress"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while len(list(dest.glob("*.out"))) < 10 and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        before = {p.name: p.stat().st_mtime_ns for p in dest.glob("*.out")}
        assert 10 <= len(before) < INPUTS, "the job was not mid-way when the node went"
        cluster.remove_node(worker)  # its raylet and every worker process on it, the actor among them
        out, err = job.communicate(timeout=600)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 3, err[-3000:]  # finished, with the one broken input failed
    assert f"{INPUTS + 1} input(s), 0 already done, {INPUTS} written, 1 failed; {INPUTS} record(s)" in out, out + err[-2000:]
    # (the node count is of the results the driver received: those the lost node held in its object store
    # went with it, and were counted again from the actor that took its batches over)
    assert re.search(r"engine ray on [12] node\(s\)", out)
    scored = {p.name: p.stat().st_mtime_ns for p in dest.glob("*.out")}
    assert set(scored) == {f"{i:03d}.jpg.out" for i in range(INPUTS)}
    assert all(scored[name] == stamp for name, stamp in before.items())  # what was written before is never rewritten
    assert all(json.loads(p.read_text())["topk_labels"] for p in dest.glob("*.out"))
    failures = [json.loads(line) for line in (dest / "_failures.jsonl").read_text().splitlines()]
    assert [f["key"] for f in failures] == ["broken.jpg"]
