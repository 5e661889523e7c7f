"""The debugger tensors are the numbers they claim to be."""

import math

import pytest
import torch
from torch import nn

from dogbreed.monitor.probes import TensorProbe


def _step(model, probe, step, optimizer):
    probe.before_forward(step)
    loss = model(torch.randn(6, 5)).square().mean()
    optimizer.zero_grad()
    loss.backward()
    probe.after_backward(step, 1, float(step), loss)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer.step()
    probe.after_step()
    return loss.item(), before


def test_statistics_match_a_direct_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    nn.init.zeros_(model[0].bias)  # an all-zero weight has no update ratio
    model[2].requires_grad_(False)  # frozen: never read
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    probe = TensorProbe(model, prefix="net.", interval=1, early_steps=1)
    loss, before = _step(model, probe, 0, optimizer)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    record = probe.flush()[0]
    assert record["names"] == ["net.0.weight", "net.0.bias"]
    assert record["loss"] == pytest.approx(loss, rel=1e-5)
    for i, name in enumerate(["0.weight", "0.bias"]):
        w, g = before[name], grads[name]
        assert record["grad_l2"][i] == pytest.approx(g.norm().item(), rel=1e-4)
        assert record["grad_abs_mean"][i] == pytest.approx(g.abs().mean().item(), rel=1e-4)
        assert record["weight_l2"][i] == pytest.approx(w.norm().item(), rel=1e-4, abs=1e-7)
        assert record["weight_mean"][i] == pytest.approx(w.mean().item(), rel=1e-4, abs=1e-7)
        assert record["weight_std"][i] == pytest.approx(w.std().item(), rel=1e-3, abs=1e-6)
        q = torch.quantile(g.flatten(), torch.tensor([0.05, 0.95]))
        assert record["grad_range"][i] == pytest.approx((q[1] - q[0]).item(), rel=1e-4, abs=1e-7)
    w0 = before["0.weight"]
    moved = (model[0].weight.detach() - w0).norm() / w0.norm()
    assert record["update_ratio"][0] == pytest.approx(moved.item(), rel=1e-4)
    assert math.isnan(record["update_ratio"][1])
    assert "relu" not in record  # its enclosing module (the whole net) holds a frozen layer


def test_relus_of_frozen_blocks_and_late_steps_are_not_measured():
    model = nn.Sequential(nn.Sequential(nn.Linear(5, 8), nn.ReLU()), nn.Sequential(nn.Linear(8, 8), nn.ReLU()), nn.Linear(8, 3))
    model[0].requires_grad_(False)
    probe = TensorProbe(model, interval=2, early_steps=2)
    assert [name for name, _ in probe.relus] == ["1.1"]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    for step in range(5):
        _step(model, probe, step, optimizer)
    records = probe.flush()
    assert [r["step"] for r in records] == [0, 1, 2, 4]  # every early step, then every 2nd
    assert [("relu" in r) for r in records] == [True, True, False, False]
    active = records[0]["relu"]["1.1#0"]["active"]
    assert len(active) == 8 and all(0 <= a <= 1 for a in active)
    assert records[2]["loss"] > 0  # the mean of steps 2's loss alone (step 1 was recorded)
    assert not probe._hooks  # removed once past the early steps


def test_interval_zero_records_only_the_early_steps_and_keeps_nothing_after():
    model = nn.Linear(5, 3)
    probe = TensorProbe(model, interval=0, early_steps=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(50):
        _step(model, probe, step, optimizer)
    assert [r["step"] for r in probe.flush()] == [0, 1]
    assert probe._losses == []  # no unbounded list of losses waiting for a record that never comes
