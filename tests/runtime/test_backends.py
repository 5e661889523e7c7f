"""The one backend race (the server's ``auto`` and the embedding cache both run it) and the one
bf16 test, on candidates whose cost is known: a fake clock that each forward pass moves on."""

import platform
import warnings
from types import SimpleNamespace

import pytest
import torch

from dogbreed import machine
from dogbreed.runtime import backends
from dogbreed.train import amp_dtype_for


@pytest.fixture
def clock(monkeypatch):
    """The race's clock, moved on only by the candidates: each costs exactly what it says."""
    now = [0.0]
    monkeypatch.setattr(backends, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    return now


def candidate(clock, seconds_at, passes: list):
    def forward(batch):
        passes.append(len(batch))
        clock[0] += seconds_at(len(batch))
    return forward


def test_each_candidate_is_warmed_up_and_timed_alike_and_the_fastest_at_the_largest_batch_wins(clock):
    inputs = {1: [0], 4: [0] * 4}
    passes = {"a": [], "b": [], "c": []}
    race = backends.Selection("auto", "eager")
    race.skipped["onnx"] = backends.NOT_EXPORTED
    # a is fast on one image and slow on four; b is as fast on both; c is b's twin, timed after it
    assert race.measure("a", candidate(clock, lambda n: 0.001 * n * n, passes["a"]), inputs)
    assert race.measure("b", candidate(clock, lambda n: 0.002 * n, passes["b"]), inputs)
    assert not race.measure("c", candidate(clock, lambda n: 0.002 * n, passes["c"]), inputs)  # a tie keeps b
    each = [1] * (backends.WARM_UPS + backends.MIN_PASSES) + [4] * (backends.WARM_UPS + backends.MIN_PASSES)
    assert passes == {"a": each, "b": each, "c": each}
    assert race.measured == {"a": {1: pytest.approx(1000), 4: pytest.approx(250)},
                             "b": {1: pytest.approx(500), 4: pytest.approx(500)},
                             "c": {1: pytest.approx(500), 4: pytest.approx(500)}}
    assert race.chosen == "b" and race.batch("b") == race.batch("a") == 4 and race.speed("a") == pytest.approx(250)
    assert race.seconds == pytest.approx(clock[0])
    assert race.line() == ("backend b (auto); img/s at batch 1/4: b 500.0/500.0, c 500.0/500.0, a 1000.0/250.0 "
                           f"({clock[0]:.1f}s); not used: onnx not exported ({backends.EXPORT_HINT})")


def test_a_caller_that_picks_its_batch_size_races_each_candidate_at_its_fastest(clock):
    """The embedding cache runs the winner in chunks of whichever size suits it."""
    inputs = {8: [0] * 8, 16: [0] * 16}
    race = backends.Selection("auto", "eager", any_batch=True)
    race.measure("eager", candidate(clock, lambda n: 0.000125 * n * n, []), inputs)  # 1000/s at 8, 500/s at 16
    assert not race.measure("onnx", candidate(clock, lambda n: 0.0015 * n, []), inputs)  # 667/s at both
    assert race.chosen == "eager" and race.batch("eager") == 8 and race.speed("eager") == pytest.approx(1000)


def test_a_time_budget_buys_more_timed_passes_up_to_the_most(clock):
    passes: list = []
    rates = backends.timed(candidate(clock, lambda n: 0.01, passes), {1: [0], 2: [0, 0]}, seconds=0.16)
    # 0.08 s each, warm-ups included: 2 + 6 passes (the 8th starts at 0.07 s)
    assert passes == [1] * (backends.WARM_UPS + 6) + [2] * (backends.WARM_UPS + 6)
    assert rates == {1: pytest.approx(1 / 0.01), 2: pytest.approx(2 / 0.01)}
    passes.clear()
    backends.timed(candidate(clock, lambda n: 1e-6, passes), {1: [0]}, seconds=1.0)  # far from its deadline
    assert len(passes) == backends.WARM_UPS + backends.MAX_PASSES


def test_no_pass_starts_after_the_deadline_and_a_candidate_without_its_least_passes_is_out_of_time(clock):
    passes: list = []
    slow = candidate(clock, lambda n: 0.3, passes)
    # a generous share, a deadline at 1 s: warm-ups at 0 and 0.3, timed passes at 0.6 and 0.9, none at 1.2
    assert backends.timed(slow, {1: [0]}, seconds=10, deadline=1.0) == {1: pytest.approx(1 / 0.3)}
    assert len(passes) == backends.WARM_UPS + backends.MIN_PASSES and clock[0] == pytest.approx(1.2)
    passes.clear()
    with pytest.raises(backends.OutOfTime):  # batch 1 takes 1.2 s of the 1 s left: batch 8 cannot start
        backends.timed(slow, {1: [0], 8: [0] * 8}, seconds=10, deadline=clock[0] + 1.0)
    assert passes == [1] * (backends.WARM_UPS + backends.MIN_PASSES)  # and started nothing after the deadline


def test_torchscript_is_timed_only_after_the_jit_optimised_it_at_every_batch_size(clock):
    """The profiling executor runs a graph instrumented first and builds its optimised plan on the next run."""
    profiled = torch._C._jit_get_num_profiled_runs()
    assert backends.warm_ups("torchscript") >= profiled + 2 and backends.warm_ups("onnx") == backends.WARM_UPS
    passes: list = []
    backends.Selection("auto", "eager").measure("torchscript", candidate(clock, lambda n: 0.01, passes),
                                                {1: [0], 8: [0] * 8})
    each = backends.warm_ups("torchscript") + backends.MIN_PASSES
    assert passes == [1] * each + [8] * each


def test_the_warm_ups_leave_the_real_jit_running_its_optimised_plan():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.trace is deprecated": export still writes it
        traced = torch.jit.trace(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval(),
                                 torch.rand(1, 3, 8, 8))
    with torch.inference_mode():
        for batch in (1, 8):
            for _ in range(backends.warm_ups("torchscript")):
                traced(torch.rand(batch, 3, 8, 8))
            traced(torch.rand(batch, 3, 8, 8))  # the first timed pass
            assert "prim::profile" not in str(torch.jit.last_executed_optimized_graph()), batch


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
