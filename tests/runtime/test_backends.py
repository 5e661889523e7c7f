"""The one bf16 test, which training and serving both ask."""

import platform

import torch

from dogbreed import machine
from dogbreed.runtime import backends
from dogbreed.train import amp_dtype_for


def test_one_bf16_answer_for_training_and_serving_that_agrees_with_the_cpus_flags(monkeypatch):
    answer = backends.cpu_bf16()
    assert isinstance(answer, bool)
    flags = machine.cpu_flags()
    if flags and platform.machine() == "x86_64":
        assert answer == bool({"avx512_bf16", "amx_bf16"} & flags)
    elif flags and platform.machine() == "aarch64":
        assert answer == ("bf16" in flags)
    cpu = torch.device("cpu")
    assert backends.native_bf16(cpu) == answer and not backends.native_bf16(torch.device("meta"))
    assert amp_dtype_for(cpu, "auto") == (torch.bfloat16 if answer else None)
    assert amp_dtype_for(cpu, "off") is None and amp_dtype_for(cpu, "bf16") == torch.bfloat16
    # a torch without get_capabilities: oneDNN's own (private) check, true wherever the instructions are
    monkeypatch.delattr(torch.cpu, "get_capabilities")
    older = backends.cpu_bf16()
    assert isinstance(older, bool) and (older or not answer)
