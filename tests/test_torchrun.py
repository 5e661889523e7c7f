"""``dogbreed train`` under torchrun: 2 CPU ranks (gloo) on loopback against one process."""

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dogbreed import config
from dogbreed.batches import image_batches
from dogbreed.context import prepare
from dogbreed.train import evaluate

from .conftest import TINY, blamed, cache_use, free_port, run_cli, wait_for_line

FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "pretrained"] + [
    "--no-pretrained", "--epochs=2", "--aug-views=1", "--no-progress", "--no-profile"]


def torchrun(*args: str, ranks: int = 2, program: tuple[str, ...] = ("-m", "dogbreed")) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={ranks}",
               "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", *program, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"})


def entries(cache) -> dict:
    return {path.name: torch.load(path, weights_only=True) for path in sorted(cache.glob("*.pt"))}


def test_two_ranks_share_the_embedding_and_rank_0_alone_writes_the_run(synth_data, tiny_weights, tmp_path):
    common = ["train", "--data", str(synth_data), "--weights", str(tiny_weights), *FLAGS]
    one = run_cli(*common, "--out", str(tmp_path / "one"), "--cache-dir", str(tmp_path / "cache-one"))
    assert one.returncode == 0, one.stderr[-2000:]
    two = torchrun(*common, "--out", str(tmp_path / "two"), "--cache-dir", str(tmp_path / "cache-two"))
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("run: ") == 1  # rank 0 speaks

    # The ranks' shares summed into the same entries one process computes, under the same keys.
    alone, shared = entries(tmp_path / "cache-one"), entries(tmp_path / "cache-two")
    assert set(alone) == set(shared) and len(alone) == 3
    for name in alone:
        assert torch.equal(alone[name]["labels"], shared[name]["labels"])
        assert torch.equal(alone[name]["ok"], shared[name]["ok"]) and bool(shared[name]["ok"].all())
        torch.testing.assert_close(shared[name]["features"].float(), alone[name]["features"].float(), atol=2e-2,
                                   rtol=2e-2)

    # One run folder, of the same kind as one process's.
    (run_one,), (run_two,) = (list((tmp_path / name).iterdir()) for name in ("one", "two"))
    assert {p.name for p in run_two.iterdir()} == {p.name for p in run_one.iterdir()}
    assert (run_two / "model.tar.gz").stat().st_size > 0
    assert cache_use(run_two) == {"hits": 0, "computed": 3, "ranks": 2}

    again = torchrun(*common, "--out", str(tmp_path / "two"), "--cache-dir", str(tmp_path / "cache-two"))
    assert again.returncode == 0, again.stderr[-3000:]
    (run_again,) = set((tmp_path / "two").iterdir()) - {run_two}
    assert cache_use(run_again) == {"hits": 3, "computed": 0, "ranks": 2}


def test_ddp_steps_and_evaluation_match_one_process(tmp_path):
    """PyTorch's DDP equivalence check on dogbreed's own training step, and evaluation over unpadded
    shards against one process over the whole split (tests/ddp_worker.py)."""
    out = tmp_path / "ddp.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2", "--rdzv-backend=c10d",
               f"--rdzv-endpoint=127.0.0.1:{free_port()}", str(Path(__file__).with_name("ddp_worker.py")), str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["params_moved"] > 1e-2  # the steps changed the parameters...
    assert report["param_max_diff"] < 1e-5  # ...and DDP on the ranks' slices changed them as one process did
    one, shared = report["one"], report["shared"]
    assert shared["n"] == one["n"] == 7  # no image padded in, none counted twice
    assert shared["accuracy"] == one["accuracy"] and shared["top5"] == one["top5"]
    assert abs(shared["loss"] - one["loss"]) < 1e-6
    assert report["indices"] == list(range(7)) and report["same_targets"]  # gathered in the split's order
    assert report["logits_max_diff"] < 1e-6 and report["features_max_diff"] < 1e-6
    assert report["skipped_moved"] > 1e-2 and report["skipped_ranks_diff"] == 0  # the ranks stayed in step
    # Batches of 7 dealt unevenly (the last, of 1, leaves rank 1 nothing): one process's gradients and step.
    assert report["shares"] == [[4, 4, 4, 1], [3, 3, 3, 0]]
    assert report["uneven_steps"] == report["whole_steps"] == 4
    assert report["uneven_grad_size"] > 1e-2 and report["uneven_grad_max_diff"] < 1e-5
    assert report["uneven_moved"] > 1e-2 and report["uneven_param_max_diff"] < 1e-5


def test_two_ranks_train_the_network_on_images_and_resume(synth_data, tmp_path):
    """DDP on the images path, with a global batch that does not split over the ranks (7: 4 and 3):
    the run folder is one process's kind, --resume continues under torchrun, the profile holds both
    ranks' steps and system samples, and the test numbers equal one process's evaluation of the
    same weights."""
    profiled = [flag for flag in FLAGS if flag != "--no-profile"]
    images = ["train", "--data", str(synth_data), *profiled, "--train-layers=layer4", "--amp=off",
              "--calibrate", "--reject=mahalanobis", "--batch-size=7"]
    one = run_cli(*images, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-2000:]
    two = torchrun(*images, "--out", str(tmp_path / "two"), "--epochs=1")
    assert two.returncode == 0, two.stderr[-3000:]
    (run_one,), (run_two,) = (list((tmp_path / name).iterdir()) for name in ("one", "two"))
    resumed = torchrun("train", "--resume", str(run_two), "--epochs=2", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {run_two} after epoch 1" in resumed.stdout + resumed.stderr

    assert {p.name for p in run_two.iterdir()} == {p.name for p in run_one.iterdir()}
    rows = lambda run: list(csv.DictReader(open(run / "metrics.csv")))  # noqa: E731
    assert [r["epoch"] for r in rows(run_two)] == ["1", "2"] and rows(run_two)[0].keys() == rows(run_one)[0].keys()
    results = json.loads((run_two / "results.json").read_text())
    assert results["test_n"] == json.loads((run_one / "results.json").read_text())["test_n"] == 8
    assert results["calibration"] and results["rejection"]

    # Rank 1's steps (each epoch's train and valid, then test) and system samples are in rank 0's profile.
    profile = run_two / "profile"
    steps = [json.loads(line) for line in open(profile / "steps.jsonl")]
    ranks = {(s.get("rank", 0), s["phase"]) for s in steps}
    assert {(r, p) for r in (0, 1) for p in ("train", "eval", "test")} <= ranks
    train_steps = {r: [s for s in steps if s["phase"] == "train" and s.get("rank", 0) == r] for r in (0, 1)}
    assert len(train_steps[0]) == len(train_steps[1]) == 2 * 7  # 2 epochs of 48 images in global batches of 7
    assert any(json.loads(line).get("rank") == 1 for line in open(profile / "system.jsonl"))
    balance = json.loads((profile / "rules" / "LoadBalancing.json").read_text())  # it compared the two ranks
    assert set(balance["details"]["data_share_by_rank"]) == {"0", "1"} and balance["evaluations"] > 0, balance

    # The same best weights judged by one process over the whole test split.
    cfg = config.resolve(run_two / "config.yaml")
    ctx = prepare(cfg)
    ctx.model.load_state_dict(torch.load(run_two / "checkpoints" / "best.pt", weights_only=True)["model"])
    batches = image_batches(ctx)
    alone = evaluate(ctx.model, batches.test, device=torch.device("cpu"))
    assert alone.n == results["test_n"] and alone.accuracy == results["test_accuracy"]
    assert abs(alone.loss - results["test_loss"]) < 1e-4


def test_a_global_batch_smaller_than_the_ranks_is_one_line_for_the_job(synth_data, tmp_path):
    """Every rank refuses it alike, before joining: rank 0 alone says so, and nothing is written."""
    proc = torchrun("train", "--data", str(synth_data), *FLAGS, "--train-layers=layer4", "--batch-size=1",
                    "--out", str(tmp_path / "runs"))
    assert proc.returncode != 0
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error: ")]
    assert lines == ["error: --batch-size 1 is the global batch, dealt over 2 ranks: pass at least 2 (an image for "
                     "each rank)"], proc.stderr[-3000:]
    frames = [line for line in proc.stderr.splitlines() if line.lstrip().startswith("File ")]
    assert not [line for line in frames if "dogbreed" in line], proc.stderr[-3000:]  # torchrun's own summary aside
    assert not (tmp_path / "runs").exists()


def test_tune_under_torchrun_shares_one_study_and_rank_0_alone_writes(synth_data, tiny_weights, tmp_path):
    import optuna

    proc = torchrun("tune", "--data", str(synth_data), "--weights", str(tiny_weights), "--out", str(tmp_path / "tune"),
                    "--cache-dir", str(tmp_path / "cache"), *FLAGS, "--trials=3", "--parallel=1", "--heartbeat=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("best run: ") == 1  # one final run, by rank 0
    study = optuna.load_study(study_name="dogbreed", storage=f"sqlite:///{tmp_path / 'tune' / 'tune.db'}")
    states = [t.state.name for t in study.trials]
    assert len(states) == 3 and set(states) <= {"COMPLETE", "PRUNED"} and "COMPLETE" in states  # 3 planned, each run once
    folder = tmp_path / "tune" / "tune-dogbreed"
    assert (folder / "best.json").is_file() and (folder / "best" / "model.tar.gz").is_file()
    assert sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.startswith("best")) == ["best"]


def test_tune_under_torchrun_prints_every_finished_trial_even_before_rank_0_watches(synth_data, tiny_weights, tmp_path):
    """Rank 0 prints a line for every trial the job finished, those another rank finished before
    rank 0 started watching the study too (here its start waits until one has)."""
    import optuna

    out = tmp_path / "tune"
    proc = torchrun("tune", "--data", str(synth_data), "--weights", str(tiny_weights), "--out", str(out),
                    "--cache-dir", str(tmp_path / "cache"), *FLAGS, "--trials=3", "--parallel=1", "--heartbeat=2",
                    program=(str(Path(__file__).with_name("late_rank0.py")), str(out / "tune.db")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="dogbreed", storage=f"sqlite:///{out / 'tune.db'}")
    printed = sorted(int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("trial "))
    assert printed == [t.number for t in study.trials], proc.stdout  # each finished trial's line, once


def test_a_killed_rank_ends_the_job_naming_it(synth_data, tiny_weights, tmp_path):
    """Rank 1 killed once it runs: torchrun ends rank 0 too and exits non-zero, naming rank 1."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2", "--rdzv-backend=c10d",
               f"--rdzv-endpoint=127.0.0.1:{free_port()}", "-m", "dogbreed", "train", "--data", str(synth_data),
               "--weights", str(tiny_weights), "--out", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"),
               *FLAGS]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"})
    try:
        victim = None
        deadline = time.monotonic() + 120
        while victim is None and time.monotonic() < deadline and proc.poll() is None:
            victim = next((pid for pid in children(proc.pid) if b"RANK=1\0" in environ(pid)), None)
            time.sleep(0.2)
        assert victim, "rank 1 never started"
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "rank      : 1" in err or "rank: 1" in err, err[-2000:]
    assert not list((tmp_path / "runs").glob("*/model.tar.gz"))


def test_a_hung_rank_ends_the_job_within_the_rank_timeout_naming_it(synth_data, tmp_path):
    """Rank 1 frozen (SIGSTOP) in the middle of DDP training: rank 0's watchdog names it within
    --rank-timeout, and the job ends non-zero (long before the collectives' own 30 minutes)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2", "--rdzv-backend=c10d",
               f"--rdzv-endpoint=127.0.0.1:{free_port()}", "-m", "dogbreed", "train", "--data", str(synth_data),
               "--out", str(tmp_path / "runs"), *FLAGS, "--epochs=20", "--train-layers=layer4", "--rank-timeout=5"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=open(tmp_path / "stderr", "w"), text=True,
                            env={**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"})
    victim = None
    try:
        assert wait_for_line(proc, "epoch   1/"), "rank 1 never trained an epoch"  # rank 0's epoch lines
        victim = next((pid for pid in children(proc.pid) if b"RANK=1\0" in environ(pid)), None)
        assert victim, "rank 1 is gone"
        os.kill(victim, signal.SIGSTOP)
        stopped = time.monotonic()
        proc.communicate(timeout=150)
        took = time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            proc.kill()
        if victim:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
    assert proc.returncode != 0
    err = (tmp_path / "stderr").read_text()
    named = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(named) == 1 and blamed(named[0]) == 1 and "--rank-timeout 5" in named[0], err[-3000:]
    assert took < 120  # the watchdog's bound plus torchrun's own shutdown, not a collective's timeout
    assert not list((tmp_path / "runs").glob("*/model.tar.gz"))


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []


def environ(pid: int) -> bytes:
    try:
        return b"\0" + open(f"/proc/{pid}/environ", "rb").read()
    except OSError:
        return b""


def on_two_hosts(hosts_, argv: list[str], out: Path, own=lambda i: []) -> list[subprocess.Popen]:
    """torchrun's several-machine form, one rank on each host (``own(i)``: host i's own flags), the
    c10d rendezvous on the first. ``--local-addr`` and ``is_host`` only because the two hosts share
    this machine's host name; each host's stderr goes to ``out/host<i>.err``."""
    procs = []
    for i, host in enumerate(hosts_):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
                   "--rdzv-backend=c10d", f"--rdzv-endpoint={hosts_[0].address}:29500", "--rdzv-id=dogs",
                   f"--local-addr={host.address}", f"--rdzv-conf=is_host={int(i == 0)}", "-m", "dogbreed", *argv, *own(i)]
        env = {"GLOO_SOCKET_IFNAME": host.interface, "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen(host.command(command, env), stdout=subprocess.PIPE, text=True,
                                      stderr=open(out / f"host{i}.err", "w")))
    return procs


def two_hosts_or_skip():
    from .hosts import two_hosts, unavailable

    if why := unavailable():
        pytest.skip(f"two hosts cannot be made on this machine: {why}")
    return two_hosts()


def test_two_machines_run_one_job_and_the_first_writes_it(synth_data, tiny_weights, tmp_path):
    """The several-machine command: two hosts (network namespaces, each its own address, joined by
    a link of their own), each with its own embedding cache; one run folder, from rank 0."""
    argv = ["train", "--data", str(synth_data), "--weights", str(tiny_weights), *FLAGS, "--out", str(tmp_path / "runs")]
    with two_hosts_or_skip() as hosts_:
        procs = on_two_hosts(hosts_, argv, tmp_path, own=lambda i: ["--cache-dir", str(tmp_path / f"cache{i}")])
        try:
            outs = [proc.communicate(timeout=240)[0] for proc in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
    errs = [(tmp_path / f"host{i}.err").read_text() for i in range(2)]
    assert [proc.returncode for proc in procs] == [0, 0], errs
    assert "rank 0 of 2 joined" in outs[0] and "rank 1 of 2 joined" in outs[1]
    assert "run: " not in outs[1]
    assert len(list((tmp_path / "cache0").glob("*.pt"))) == 3 and not (tmp_path / "cache1").exists()  # rank 0's cache
    (run,) = (tmp_path / "runs").iterdir()
    assert (run / "model.tar.gz").is_file() and json.loads((run / "results.json").read_text())["test_n"] == 8
    assert cache_use(run) == {"hits": 0, "computed": 3, "ranks": 2}


def test_a_machine_cut_off_ends_the_job_on_both_sides_naming_it(synth_data, tmp_path):
    """DDP on images across two hosts, then the second host's link goes down in mid-training: the
    first host's rank names rank 1 within --rank-timeout and its job ends; rank 1, which can reach
    nothing, ends too, saying it lost the rendezvous store (a blocked store call is bounded)."""
    argv = ["train", "--data", str(synth_data), *FLAGS, "--epochs=100", "--train-layers=layer4", "--rank-timeout=5",
            "--out", str(tmp_path / "runs")]
    with two_hosts_or_skip() as hosts_:
        procs = on_two_hosts(hosts_, argv, tmp_path)
        try:
            assert wait_for_line(procs[0], "epoch   2/", timeout=240), "DDP across the link never got going"
            subprocess.run(["ip", "-n", hosts_[1].namespace, "link", "set", hosts_[1].interface, "down"], check=True)
            procs[0].communicate(timeout=120)
            deadline = time.monotonic() + 120  # rank 1's own end: the agent above it may wait on the store for good
            while time.monotonic() < deadline and "error: rank 1" not in (tmp_path / "host1.err").read_text():
                time.sleep(0.5)
        finally:
            subprocess.run(["pkill", "-KILL", "-f", str(tmp_path / "runs")])  # the agents and any rank left
    errs = [(tmp_path / f"host{i}.err").read_text() for i in range(2)]
    assert procs[0].returncode == 1, errs[0][-3000:]
    named = [line for line in errs[0].splitlines() if line.startswith("error: ")]
    assert len(named) == 1 and blamed(named[0]) == 1 and "(--rank-timeout 5)" in named[0], errs[0][-3000:]
    lost = [line for line in errs[1].splitlines() if line.startswith("error: ")]
    assert len(lost) == 1 and "rank 1 has had no answer from the rendezvous store" in lost[0], errs[1][-3000:]
    assert not list((tmp_path / "runs").glob("*/model.tar.gz"))


def test_a_store_that_stops_answering_ends_the_rank_within_the_timeout(tmp_path):
    """The watchdog's own bound: a rendezvous store that keeps its connection open but never answers
    (its host frozen here; a machine gone or a cut network elsewhere) ends the rank in one line,
    where the store call alone would block for good."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", "import sys, time, torch.distributed as d; "
                               f"s = d.TCPStore('127.0.0.1', {port}, is_master=True, wait_for_workers=False); "
                               "print('up', flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    rank = None
    try:
        assert server.stdout.readline().strip() == "up"
        rank = subprocess.Popen([sys.executable, "-c", "import time; from dogbreed.watchdog import Progress, Watchdog; "
                                 "Watchdog(0, 2, Progress(), 2.0, 0.5).start(); print('watching', flush=True); "
                                 "time.sleep(120)"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0",
                                     "WORLD_SIZE": "2"})
        assert rank.stdout.readline().strip() == "watching"
        time.sleep(2)  # a few rounds answered (rank 1 never posts: nothing to judge yet)
        assert rank.poll() is None
        server.send_signal(signal.SIGSTOP)
        _, err = rank.communicate(timeout=60)
    finally:
        for proc in (rank, server):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert rank.returncode == 1
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    assert line.startswith("error: rank 0 has had no answer from the rendezvous store at 127.0.0.1 for ") and \
        line.endswith("ending this rank (--rank-timeout 2)"), err
