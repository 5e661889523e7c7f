"""What the machine offers: usable CPUs, CPU flags, and the devices a run may ask for."""

import os
import subprocess
import sys

import pytest
import torch

from dogbreed import machine
from dogbreed.errors import DogbreedError


def test_available_cpus_is_the_affinity_mask_at_most():
    cpus = machine.available_cpus()
    assert 1 <= cpus <= len(os.sched_getaffinity(0))


def test_flags_are_the_cpus_own():
    flags = machine.cpu_flags()
    assert set(machine.notable_flags()) <= flags
    assert machine.cpu_model() in machine.describe() and "CPUs" in machine.describe()


@pytest.mark.parametrize("name, message", [
    ("banana", "device 'banana' is not valid; use auto, cpu, cuda or cuda:N"),
    ("cuda:x", "device 'cuda:x' is not valid; use auto, cpu, cuda or cuda:N"),
    ("CPU", "device 'CPU' is not valid; use auto, cpu, cuda or cuda:N"),
    ("meta", "device 'meta' cannot train dogbreed models; use auto, cpu, cuda or cuda:N"),
])
def test_a_device_that_is_not_one_is_one_line(name, message):
    with pytest.raises(DogbreedError) as err:
        machine.resolve_device(name)
    assert str(err.value) == message


def test_the_devices_this_machine_has():
    assert machine.resolve_device("cpu") == torch.device("cpu")
    assert machine.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DogbreedError, match="no CUDA GPU is visible; use --device cpu"):
            machine.resolve_device("cuda:0")


def test_each_torchrun_rank_on_a_machine_takes_the_gpu_of_its_local_rank(monkeypatch):
    for name in ("CUDA_VISIBLE_DEVICES", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    rank_gpu = machine.rank_gpu
    cuda = torch.device("cuda")
    assert rank_gpu(cuda, gpus=8) == cuda  # not under torchrun
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # 2 machines of 2 ranks
    assert rank_gpu(cuda, gpus=2) == torch.device("cuda", 1)
    with pytest.raises(DogbreedError, match=r"--device cuda:0 names one GPU, but torchrun started 2 ranks"):
        rank_gpu(torch.device("cuda", 0), gpus=2)
    with pytest.raises(DogbreedError, match=r"started 2 ranks on this machine but 1 GPU\(s\) are visible; pass "
                                            r"--nproc-per-node 1, or --device cpu"):
        rank_gpu(cuda, gpus=1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-5")  # a launcher that shows each rank its own GPU only
    assert rank_gpu(cuda, gpus=1) == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")  # one rank a machine (SageMaker's hosts): the device as asked
    assert rank_gpu(torch.device("cuda", 3), gpus=4) == torch.device("cuda", 3)


FREE_A_BLOCK = """
import sys, psutil, torch
from dogbreed import machine
kept = sys.argv[1] == "keep" and machine.keep_freed_memory()
rss = psutil.Process().memory_info().rss
block = torch.ones(32 * 2**20)  # 128 MB, every page touched
del block
print(int(kept), (psutil.Process().memory_info().rss - rss) // 2**20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
@pytest.mark.parametrize("mode", ["keep", "default", "opted-out"])
def test_freed_memory_is_kept_for_the_next_batch_only_when_asked(mode):
    """A forward pass's large activations are freed every batch: kept, the next batch reuses their
    pages; by default glibc unmaps them (and the next batch faults them in again)."""
    env = {**os.environ, "DOGBREED_KEEP_FREED_MEMORY": "0" if mode == "opted-out" else "1"}
    out = subprocess.run([sys.executable, "-c", FREE_A_BLOCK, "default" if mode == "default" else "keep"],
                         capture_output=True, text=True, env=env, timeout=120, check=True)
    kept, grown_mb = map(int, out.stdout.split())
    assert kept == (mode == "keep")
    assert (grown_mb >= 120) if mode == "keep" else (grown_mb < 32)
