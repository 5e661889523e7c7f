"""Each rule on synthetic metric streams: one stream that must trigger it, one that must not."""

import math

import pytest

from dogbreed.errors import DogbreedError
from dogbreed.monitor.rules import RULES, RuleSet, validate_rules
from dogbreed.monitor.rules.base import State, Status

CPU_ONLY = {"hardware": {"cpu_cores": 4, "gpus": []}, "started": 0.0}
ONE_GPU = {"hardware": {"cpu_cores": 4, "gpus": [{"name": "gpu0"}]}, "started": 0.0}
TWO_GPUS = {"hardware": {"cpu_cores": 4, "gpus": [{"name": "gpu0"}, {"name": "gpu1"}]}, "started": 0.0}


def run(rule: str, stream: str, records: list[dict], meta=None, **params):
    r = RULES[rule](dict(meta or CPU_ONLY), params)
    for record in records:
        r.observe(stream, record)
    r.finish()
    return r


def sample(t, util=None, mem=None, cores=(50.0, 50.0), iowait=0.0, gpus=1):
    record = {"t": t, "cpu": sum(cores) / len(cores), "cores": list(cores), "iowait": iowait}
    if util is not None:
        utils = util if isinstance(util, (list, tuple)) else [util] * gpus
        record["gpus"] = [{"util": u, "mem_percent": mem if mem is not None else 50.0} for u in utils]
    return record


def tensors(step, loss=1.0, names=("fc.weight",), **values):
    return {"t": float(step), "step": step, "epoch": 1, "loss": loss, "names": list(names), **values}


def epoch(n, train, val, step=None):
    return {"t": float(n), "event": "epoch", "epoch": n, "train_loss": train, "val_loss": val, "step": step or 10 * n}


# --- profiler rules ---------------------------------------------------------------------------------


def test_low_gpu_utilization_low_fluctuating_and_healthy():
    p = {"window": 10, "patience": 20}
    assert run("LowGPUUtilization", "system", [sample(i, util=30) for i in range(30)], ONE_GPU, **p).triggers == 10
    flapping = [sample(i, util=95 if i % 2 else 0) for i in range(30)]
    fired = run("LowGPUUtilization", "system", flapping, ONE_GPU, **p)
    assert fired.triggers and "fluctuating" in fired.messages[0]["message"]
    healthy = run("LowGPUUtilization", "system", [sample(i, util=90) for i in range(30)], ONE_GPU, **p)
    assert healthy.triggers == 0 and healthy.status() == Status(State.NO_ISSUES)
    waiting = run("LowGPUUtilization", "system", [sample(i, util=30) for i in range(15)], ONE_GPU, **p)
    assert waiting.triggers == 0 and waiting.status() == Status(State.NO_DATA, "evaluates after 20 samples per GPU")
    assert str(waiting.status()) == "no data: evaluates after 20 samples per GPU"  # as its result file spells it


def test_gpu_rules_are_not_applicable_on_a_cpu_machine():
    ruleset = RuleSet(dict(CPU_ONLY))
    ruleset.feed("system", [sample(i) for i in range(50)])
    ruleset.finish()
    results = ruleset.results()
    status = {r["rule"]: r["status"] for r in results}
    for rule in ("LowGPUUtilization", "BatchSize", "CPUBottleneck", "IOBottleneck", "GPUMemoryIncrease", "LoadBalancing"):
        assert status[rule].state is State.NOT_APPLICABLE, rule
    assert status["LowGPUUtilization"].reason == "no NVIDIA GPU on this machine"
    assert status["OverallSystemUsage"] == Status(State.SUMMARY)
    order = [State.TRIGGERED, State.NO_ISSUES, State.NO_DATA, State.SUMMARY, State.NOT_APPLICABLE]
    states = [r["status"].state for r in results]  # the report lists what decided something first
    assert states == sorted(states, key=order.index) and states[-1] is State.NOT_APPLICABLE


def test_batch_size():
    p = {"window": 10, "patience": 20}
    low = [sample(i, util=20, mem=20, cores=(20.0, 20.0)) for i in range(30)]
    assert run("BatchSize", "system", low, ONE_GPU, **p).triggers
    busy = [sample(i, util=90, mem=20, cores=(20.0, 20.0)) for i in range(30)]
    assert run("BatchSize", "system", busy, ONE_GPU, **p).triggers == 0


def test_cpu_bottleneck():
    starved = [sample(i, util=5, cores=(95.0, 10.0)) for i in range(20)]
    assert run("CPUBottleneck", "system", starved, ONE_GPU, patience=10).triggers
    fed = [sample(i, util=80, cores=(95.0, 10.0)) for i in range(20)]
    assert run("CPUBottleneck", "system", fed, ONE_GPU, patience=10).triggers == 0


def test_io_bottleneck():
    waiting = [sample(i, util=5, iowait=60.0) for i in range(20)]
    assert run("IOBottleneck", "system", waiting, ONE_GPU, patience=10).triggers
    fine = [sample(i, util=5, iowait=5.0) for i in range(20)]
    assert run("IOBottleneck", "system", fine, ONE_GPU, patience=10).triggers == 0


def test_dataloader_workers_against_cores():
    loader = {"t": 0.0, "event": "loader", "phase": "train", "kind": "images", "pin_memory": False}
    assert run("Dataloader", "events", [{**loader, "workers": 1}]).triggers == 1  # 25% of 4 cores
    assert run("Dataloader", "events", [{**loader, "workers": 12}]).triggers == 1  # 300%
    assert run("Dataloader", "events", [{**loader, "workers": 4}]).triggers == 0
    cached = run("Dataloader", "events", [{**loader, "kind": "cached embeddings in memory", "workers": 0}])
    assert cached.triggers == 0 and cached.status().state is State.NO_DATA
    unpinned = run("Dataloader", "events", [{**loader, "workers": 4}], ONE_GPU)
    assert "does not pin memory" in unpinned.details["notes"][0]


def test_gpu_memory_increase():
    rising = [sample(i, util=50, mem=10 + 2 * i) for i in range(40)]
    assert run("GPUMemoryIncrease", "system", rising, ONE_GPU, window=5, patience=10).triggers
    flat = [sample(i, util=50, mem=40 + (i % 2)) for i in range(40)]
    assert run("GPUMemoryIncrease", "system", flat, ONE_GPU, window=5, patience=10).triggers == 0


def _steps(spikes: int, n=200):
    return [{"t": float(i), "phase": "train", "epoch": 1, "step": i, "data": 0.001,
             "compute": 0.100 if i % (n // spikes) == 0 and i // (n // spikes) < spikes else 0.010} for i in range(n)]


def test_step_outlier():
    many = run("StepOutlier", "steps", _steps(15))
    assert many.triggers and many.details["phases"]["train"]["outliers"] == 15
    assert run("StepOutlier", "steps", _steps(5)).triggers == 0  # n_outliers=10 tolerated
    assert run("StepOutlier", "steps", _steps(15), mode="eval").datapoints == 0


def test_load_balancing():
    uneven = [sample(i, util=[90, 10]) for i in range(20)]
    assert run("LoadBalancing", "system", uneven, TWO_GPUS, patience=10).triggers
    even = [sample(i, util=[80 + i % 3, 80 + (i + 1) % 3]) for i in range(20)]
    assert run("LoadBalancing", "system", even, TWO_GPUS, patience=10).triggers == 0
    assert RULES["LoadBalancing"](dict(ONE_GPU)).status().state is State.NOT_APPLICABLE


def test_load_balancing_across_torchrun_ranks():
    """DDP steps end together, so uneven work shows as one rank waiting for data."""
    two_ranks = {**CPU_ONLY, "ranks": 2}

    def steps(data_share_rank_1):
        return [{"t": float(i), "phase": "train", "epoch": 1, "step": i, "rank": r,
                 "data": 0.1 * (data_share_rank_1 if r else 0.05), "compute": 0.1 * (1 - (data_share_rank_1 if r else 0.05))}
                for i in range(12) for r in (0, 1)]

    uneven = run("LoadBalancing", "steps", steps(0.6), two_ranks)
    assert uneven.triggers and "rank 1 waits 60%" in uneven.first["message"]
    assert run("LoadBalancing", "steps", steps(0.1), two_ranks).triggers == 0
    assert run("LoadBalancing", "steps", steps(0.6)[:16], two_ranks).evaluations == 0  # under min_steps a rank
    assert RULES["LoadBalancing"](dict(CPU_ONLY)).not_applicable()  # one process, no GPUs


def test_only_rank_aware_rules_see_the_other_ranks_records():
    rules = RuleSet(dict(CPU_ONLY), {})
    by_name = {rule.name: rule for rule in rules.rules}
    rules.feed("system", [{**sample(t, cores=(100.0, 100.0)), "rank": 1} for t in range(5)])
    assert by_name["OverallSystemUsage"].datapoints == 0  # rank 1's machine is not rank 0's
    rules.feed("system", [sample(5.0)])
    assert by_name["OverallSystemUsage"].datapoints == 1
    rules.feed("steps", [{"t": 0.0, "phase": "train", "epoch": 1, "step": 0, "data": 0.0, "compute": 0.1, "rank": 1}])
    assert by_name["StepOutlier"].datapoints == 1


def test_max_initialization_time():
    stuck = run("MaxInitializationTime", "system", [sample(t) for t in (0.5, 1.0, 2.0)], threshold=0.01)
    assert stuck.triggers == 2  # 1.0 and 2.0 s are past 0.6 s
    r = RULES["MaxInitializationTime"](dict(CPU_ONLY), {"threshold": 0.01})
    r.observe("steps", {"t": 0.2, "phase": "train", "epoch": 1, "step": 0, "data": 0.05, "compute": 0.05})
    r.observe("system", sample(5.0))
    assert r.triggers == 0 and r.details["initialization_s"] == pytest.approx(0.1)


def test_max_initialization_time_counts_from_a_resume():
    """A run resumed 50 minutes after it started: its new start is quick, live (only the records
    after the resume) and over the whole profile (the report) alike."""
    meta = {**CPU_ONLY, "started": 0.0, "resumed": [3000.0]}
    step = {"phase": "train", "epoch": 2, "step": 6, "data": 0.05, "compute": 0.05}
    live = run("MaxInitializationTime", "system", [sample(3000.5), sample(3001.0)], meta)
    live.observe("steps", {"t": 3001.2, **step})
    assert live.triggers == 0 and live.details["initialization_s"] == pytest.approx(1.1)
    whole = RULES["MaxInitializationTime"](dict(meta), {})
    for stream, record in (("system", sample(1.0)), ("steps", {"t": 2.0, **step}), ("system", sample(3000.5)),
                           ("steps", {"t": 3001.2, **step})):
        whole.observe(stream, record)
    assert whole.triggers == 0
    slow = run("MaxInitializationTime", "system", [sample(3000.5), sample(3000.0 + 21 * 60)], meta)
    assert slow.triggers == 1 and "no step after 21.0 min" in slow.first["message"]


def test_overall_summaries():
    usage = run("OverallSystemUsage", "system", [sample(i, cores=(float(i), 0.0)) for i in range(101)])
    assert usage.details["metrics"]["core0"]["p95"] == pytest.approx(95.0) and usage.triggers == 0
    steps = [{"t": 1.0 + i, "phase": "train", "epoch": 1, "step": i, "data": 0.25, "compute": 0.75} for i in range(4)]
    framework = run("OverallFrameworkMetrics", "steps", steps, {**CPU_ONLY, "started": 0.0, "ended": 5.0})
    assert framework.details["phases"]["train"]["data_percent"] == 25.0
    assert framework.details["initialization_s"] == 0.0 and framework.details["finalization_s"] == 1.0


# --- debugger rules ---------------------------------------------------------------------------------


def test_vanishing_gradient():
    names = ("a.weight", "b.weight")
    assert run("VanishingGradient", "tensors", [tensors(0, names=names, grad_abs_mean=[1e-9, 1e-3])]).triggers
    assert run("VanishingGradient", "tensors", [tensors(0, names=names, grad_abs_mean=[1e-5, 1e-3])]).triggers == 0


def test_exploding_tensor():
    assert run("ExplodingTensor", "tensors", [tensors(0, loss="nan")]).triggers
    assert run("ExplodingTensor", "tensors", [tensors(0, grad_l2=["inf"], weight_l2=[1.0])]).triggers
    assert run("ExplodingTensor", "tensors", [tensors(0, grad_l2=["inf"], weight_l2=[1.0])], only_nan=True).triggers == 0
    assert run("ExplodingTensor", "tensors", [tensors(0, loss=2.0, grad_l2=[0.1], weight_l2=[3.0])]).triggers == 0


def test_overfit():
    assert run("Overfit", "events", [epoch(1, 1.0, 1.5)]).triggers == 1
    assert run("Overfit", "events", [epoch(1, 1.0, 1.05)]).triggers == 0
    assert run("Overfit", "events", [epoch(1, 1.0, 1.5), epoch(2, 1.0, 1.0)], patience=2).triggers == 0
    assert run("Overfit", "events", [epoch(1, 1.0, 1.5)], start_step=100).triggers == 0


def test_overtraining():
    flat = [epoch(n, 1.0 - 0.01 * n, 1.2) for n in range(1, 8)]
    fired = run("Overtraining", "events", flat)
    assert fired.triggers and "train_loss" in fired.first["message"] and fired.first["epoch"] == 6
    improving = [epoch(n, 3.0 - 0.3 * n, 3.2 - 0.3 * n) for n in range(1, 9)]
    assert run("Overtraining", "events", improving).triggers == 0


def test_poor_weight_initialization():
    relu = {"layer1.relu#0": {"var": 1.0, "active": [0.5]}, "layer4.relu#0": {"var": 50.0, "active": [0.5]}}
    assert run("PoorWeightInitialization", "tensors", [tensors(0, relu=relu)]).triggers
    assert run("PoorWeightInitialization", "tensors", [tensors(0, grad_range=[1e-5])]).triggers
    rising = [tensors(s, loss=1.0 + 0.1 * s, grad_range=[0.1]) for s in range(10)]
    fired = run("PoorWeightInitialization", "tensors", rising)
    assert fired.triggers == 1 and "not beaten" in fired.first["message"]
    healthy = [tensors(s, loss=2.0 - 0.1 * s, grad_range=[0.1],
                       relu={"a#0": {"var": 1.0, "active": [0.5]}, "b#0": {"var": 3.0, "active": [0.5]}}) for s in range(10)]
    assert run("PoorWeightInitialization", "tensors", healthy).triggers == 0
    late = [tensors(20, grad_range=[1e-9])]  # only the first `steps` steps count
    assert run("PoorWeightInitialization", "tensors", late).datapoints == 0


def test_loss_not_decreasing():
    rising = [tensors(s, loss=1.0 + 0.01 * s) for s in range(0, 40, 10)]
    assert run("LossNotDecreasing", "tensors", rising).triggers == 3
    falling = [tensors(s, loss=2.0 - 0.01 * s) for s in range(0, 40, 10)]
    assert run("LossNotDecreasing", "tensors", falling).triggers == 0
    assert run("LossNotDecreasing", "tensors", falling, diff_percent=50.0).triggers == 3


def test_class_imbalance():
    meta = {**CPU_ONLY, "class_counts": [100, 5]}
    assert run("ClassImbalance", "events", [epoch(5, 1.0, 1.0)], meta).triggers == 1  # 5 epochs x 105 labels
    balanced = {**CPU_ONLY, "class_counts": [50, 40]}
    few = run("ClassImbalance", "events", [epoch(1, 1.0, 1.0)], {**CPU_ONLY, "class_counts": [20, 2]})
    assert few.triggers == 0 and few.status().state is State.NO_DATA  # 22 labels < samples=500
    assert run("ClassImbalance", "events", [epoch(6, 1.0, 1.0)], balanced).triggers == 0
    per_class = {"t": 9.0, "event": "per_class", "split": "test", "names": ["a", "b"], "n": [10, 10], "correct": [9, 2]}
    fired = run("ClassImbalance", "events", [per_class], balanced)
    assert fired.triggers == 1 and "b" in fired.first["message"]
    assert run("ClassImbalance", "events", [{**per_class, "correct": [9, 5]}], balanced).triggers == 0


def test_dead_relu():
    dying = {"layer1.relu#0": {"var": 1.0, "active": [0.0] * 6 + [0.5] * 4}}
    assert run("DeadRelu", "tensors", [tensors(0, relu=dying)]).triggers == 1
    alive = {"layer1.relu#0": {"var": 1.0, "active": [0.005] * 4 + [0.5] * 6}}  # 0.5% active < 1%: 40% dead
    assert run("DeadRelu", "tensors", [tensors(0, relu=alive)]).triggers == 0
    head_only = RULES["DeadRelu"]({**CPU_ONLY, "tensors": {"relu_modules": 0}})
    assert head_only.status().state is State.NOT_APPLICABLE


def test_every_rule_is_listed_with_sagemakers_defaults():
    assert len(RULES) == 19
    assert RULES["LowGPUUtilization"].defaults == {"threshold_p95": 70, "threshold_p5": 10, "window": 500, "patience": 1000}
    assert RULES["CPUBottleneck"].defaults == {"threshold": 50, "gpu_threshold": 10, "cpu_threshold": 90, "patience": 1000}
    assert RULES["PoorWeightInitialization"].defaults == {"threshold": 10.0, "distribution_range": 0.001, "patience": 5, "steps": 10}
    assert RULES["Overtraining"].defaults == {"patience_train": 5, "patience_validation": 10, "delta": 0.1}
    for cls in RULES.values():
        assert cls.description and cls.recommendation and cls.kind in ("profiler", "debugger")


# --- the rules file ---------------------------------------------------------------------------------


def test_rules_file_overrides_disables_and_sets_actions():
    settings = validate_rules({"StepOutlier": {"stddev": 4, "n_outliers": 2}, "Overfit": {"action": "stop"}, "DeadRelu": "off"})
    ruleset = RuleSet(dict(CPU_ONLY), settings)
    names = {r.name: r for r in ruleset.rules}
    assert "DeadRelu" not in names and names["StepOutlier"].params["stddev"] == 4 and names["Overfit"].action == "stop"
    assert math.isclose(names["StepOutlier"].params["n_outliers"], 2)


@pytest.mark.parametrize("doc, fragment", [
    ({"StepOutliers": {}}, "unknown rule 'StepOutliers'; valid rules: LowGPUUtilization"),
    ({"StepOutlier": {"sigma": 3}}, "rule StepOutlier has no parameter 'sigma'; its parameters: stddev"),
    ({"StepOutlier": {"stddev": "three"}}, "StepOutlier.stddev expects int"),
    ({"Overfit": {"action": "page"}}, "Overfit.action 'page' is not valid; choose one of: log, stop"),
    (["StepOutlier"], "must map rule names to parameters"),
    ({"StepOutlier": {"mode": "training"}}, "StepOutlier.mode 'training' is not valid; choose one of: all, train, eval"),
])
def test_bad_rules_are_named(doc, fragment):
    with pytest.raises(DogbreedError) as err:
        validate_rules(doc)
    assert fragment in str(err.value)


def test_the_report_shows_a_status_as_its_word_and_its_reason():
    from dogbreed.monitor.report import _rule_rows

    ruleset = RuleSet(dict(CPU_ONLY))
    ruleset.finish()
    rows = _rule_rows([r for r in ruleset.results() if r["rule"] in ("Overfit", "LowGPUUtilization")])
    assert ('<span class="badge nodata" title="no data: nothing to evaluate in this run">no data</span>'
            "<br><span class='sub'>nothing to evaluate in this run</span>") in rows
    assert ('<span class="badge na" title="not applicable: no NVIDIA GPU on this machine">not applicable</span>'
            "<br><span class='sub'>no NVIDIA GPU on this machine</span>") in rows
