"""A frozen network made fast for the CPU: each BatchNorm folded into the convolution before it,
and each convolution fused with the activation (and the residual sum) after it, in one oneDNN call.

Measured on resnet50 at batch 16 in bf16 (Intel Xeon with AMX, 2 CPUs): the convolutions took 93
of the forward pass's 197 ms, and the ReLUs (49 of them, 48 ms) and residual sums (16, 33 ms) most
of the rest, each a pass over activations in memory. oneDNN applies both to a convolution's output
while it is still in registers ("post-ops"): the forward pass then runs 140.9 img/s against 90.0
folded under autocast, at the same distance from fp32 (relative error 0.0046 both), and fp32 runs
31.9 img/s against 30.9 (``benchmarks/cpu_forward_bench.py``).

What does this elsewhere: ``torch.compile`` (inductor with freezing applies these same fusions,
through the same oneDNN operator), which costs tens of seconds of compiling on a small CPU before a
first training that takes about as long; Intel's extension for PyTorch, which is being retired.
So the graph is rewritten here with ``torch.fx``: ``fuse`` folds the BatchNorms, then every
``Conv2d`` becomes a call of ``torch.ops.mkldnn._convolution_pointwise`` (the operator inductor
emits for the CPU) with ``relu`` (or ``swish``, SiLU) and a residual ``add`` as its post-ops.
That operator is not public: where it is missing, or a network cannot be traced, or its first
pass fails, :class:`ForCpu` runs the folded (or the plain) network, which computes the same function.

Shipped verbatim inside every artifact (``code/fusion.py``): keep it free of dogbreed imports.
"""

from __future__ import annotations

import copy
import logging
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.experimental import optimization as fx_optimization

log = logging.getLogger(__name__)
UNARY = {nn.ReLU: "relu", nn.SiLU: "swish", F.relu: "relu", torch.relu: "relu", F.silu: "swish"}
ADDS = (operator.add, operator.iadd, torch.add)


def fold_batchnorms(model: nn.Module) -> nn.Module:
    """A copy of the (frozen, eval-mode) ``model`` with each BatchNorm folded into the convolution
    that feeds it (``torch.fx``'s ``fuse``): the same function with one pass over the activations
    fewer per layer. A network fx cannot trace comes back as an unfolded copy."""
    model = copy.deepcopy(model).eval().requires_grad_(False)
    try:
        return fx_optimization.fuse(model, inplace=True).requires_grad_(False)
    except Exception as exc:  # noqa: BLE001 (tracing fails in many ways; unfolded is always right)
        log.debug("%s keeps its BatchNorms unfolded: %s", type(model).__name__, exc)
        return model


class PointwiseConv(nn.Module):
    """One ``Conv2d`` and the activation (and residual sum) after it, as one oneDNN call in
    ``dtype``. The input is cast to ``dtype`` here: autocast does not know this operator."""

    def __init__(self, conv: nn.Conv2d, dtype: torch.dtype, unary: str | None, add: bool):
        super().__init__()
        self.register_buffer("weight", conv.weight.detach().to(dtype).contiguous())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().to(dtype))
        self.geometry = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        self.unary, self.add = unary, add

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        x = x.to(self.weight.dtype)
        if not self.add:
            return torch.ops.mkldnn._convolution_pointwise(x, self.weight, self.bias, *self.geometry,
                                                           self.unary or "none", [], "")
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, residual.to(self.weight.dtype), self.weight, self.bias, *self.geometry, "add", None, self.unary, [], "")


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def pointwise(model: nn.Module, dtype: torch.dtype) -> fx.GraphModule:
    """``model`` (BatchNorms folded already) with every plain ``Conv2d`` fused with what follows it
    where the graph allows: a ReLU or SiLU that only it feeds, or a residual add (then maybe a ReLU).
    Its weights are cast to ``dtype``. Raises where the network cannot be traced or fused. ``model``
    is left as it was: the traced module holds its own modules' tree, and each fused convolution
    new buffers (in fp32 the same storage as ``model``'s weights, which nothing writes)."""
    if not available():
        raise RuntimeError("this torch has no oneDNN pointwise convolution")
    gm = fx.symbolic_trace(model)
    graph, fused = gm.graph, 0
    for node in list(graph.nodes):
        conv = _conv(gm, node)
        if conv is None:
            continue
        user = _only_user(node)
        add = user is not None and user.op == "call_function" and user.target in ADDS and not user.kwargs \
            and len(user.args) == 2 and all(isinstance(a, fx.Node) for a in user.args) and user.args[0] is not user.args[1]
        end = _only_user(user) if add else user
        unary = _unary(gm, end)
        if add:
            residual = user.args[1] if user.args[0] is node else user.args[0]
            last, inputs = (end if unary else user), (node.args[0], residual)
        else:
            last, inputs = (user if unary else node), (node.args[0],)
        name = f"fused_{fused}"
        gm.add_submodule(name, PointwiseConv(conv, dtype, unary, add))
        with graph.inserting_after(last):
            new = graph.call_module(name, inputs)
        last.replace_all_uses_with(new)
        for gone in [end] * bool(unary) + [user] * add + [node]:  # each the last user of the next
            graph.erase_node(gone)
        fused += 1
    graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm.requires_grad_(False)


def _conv(gm: fx.GraphModule, node: fx.Node) -> nn.Conv2d | None:
    if node.op != "call_module":
        return None
    module = gm.get_submodule(node.target)
    if type(module) is not nn.Conv2d or module.padding_mode != "zeros" or isinstance(module.padding, str):
        return None
    return module


def _only_user(node: fx.Node | None) -> fx.Node | None:
    return next(iter(node.users)) if node is not None and len(node.users) == 1 else None


def _unary(gm: fx.GraphModule, node: fx.Node | None) -> str | None:
    if node is None:
        return None
    if node.op == "call_module":
        return UNARY.get(type(gm.get_submodule(node.target)))
    if node.op == "call_function" and len(node.args) == 1:
        return UNARY.get(node.target)
    return None


class ForCpu(nn.Module):
    """A frozen network on the CPU at its fastest: BatchNorms folded and convolutions fused, in
    ``dtype`` (fp32, or bf16 where the caller runs it under autocast). Where fusing fails, when
    built or on its first pass, the folded network runs instead, for good."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.plain = fold_batchnorms(model)
        try:
            self.fused = pointwise(self.plain, dtype)
        except Exception as exc:  # noqa: BLE001 (tracing or fusing fails in many ways; the folded network is right)
            log.debug("%s runs without fused convolutions: %s", type(model).__name__, exc)
            self.fused = None
        self.proven = False  # once a pass ran fused, the folded copy is let go

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            try:
                out = self.fused(x)
            except Exception as exc:  # noqa: BLE001 (this CPU's oneDNN, or this torch's operator, refused it)
                if self.proven:
                    raise
                log.debug("running without fused convolutions: %s", exc)
                self.fused = None
            else:
                if not self.proven:
                    self.proven, self.plain = True, None
                return out
        return self.plain(x)
