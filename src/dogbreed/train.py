"""One training loop for both paths: ``fit`` calls ``train_one_epoch`` and ``evaluate`` on whatever
model and batches it is given, a bare head on cached embeddings or the whole network on images
(``dogbreed.batches`` builds either). Checkpoints go through ``dogbreed.checkpoints``; a profiler
sees the loop through the small ``dogbreed.hooks.StepHooks`` protocol."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from dogbreed.checkpoints import Checkpoints, FitState
from dogbreed.distributed import ALONE, Ranks
from dogbreed.errors import DogbreedError
from dogbreed.hooks import NO_HOOKS, StepHooks
from dogbreed.runtime.backends import native_bf16

log = logging.getLogger(__name__)

METRIC_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_top5", "lr", "seconds")


def amp_dtype_for(device: torch.device, mode: str) -> torch.dtype | None:
    """bf16 autocast where the hardware runs it natively (Ampere+ GPUs, CPUs with AVX512-BF16/AMX)."""
    if mode == "off":
        return None
    if mode == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if native_bf16(device) else None


def _autocast(device: torch.device, amp_dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


@dataclass
class EvalResult:
    loss: float  # mean over samples, independent of batch size
    accuracy: float
    top5: float
    n: int
    # When asked for (keep_predictions): per image, in the split's order of iteration
    logits: torch.Tensor | None = None  # (N, C) fp32, on the CPU
    targets: torch.Tensor | None = None  # (N,)
    indices: torch.Tensor | None = None  # (N,) each image's index in its split (where to find it)
    features: torch.Tensor | None = None  # (N, D) what ``features_of`` took in (the head: the embedding)

    @property
    def predictions(self) -> torch.Tensor | None:
        return None if self.logits is None else self.logits.argmax(dim=1)


def train_one_epoch(
    model: nn.Module,
    batches: Iterable,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    label_smoothing: float = 0.0,
    set_train: Callable[[], None] | None = None,
    progress: bool = False,
    desc: str = "train",
    hooks: StepHooks = NO_HOOKS,
    ranks: Ranks = ALONE,
) -> dict[str, float]:
    """One pass over ``batches``. Under DDP (``ranks.ddp``) every torchrun rank steps on its part of
    each batch, and the epoch's loss and accuracy are summed over the ranks."""
    (set_train or model.train)()
    whole = _global_sizes(batches, ranks)
    # Running sums stay on the device: one host sync per epoch, not one per step.
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    last = None  # the last batch that held an image, for a step this rank must take without one
    bar = tqdm(total=len(batches), desc=desc, unit="batch", disable=not progress, leave=False)
    for step, batch in enumerate(hooks.steps(batches, "train")):
        bar.update()
        ranks.point(f"{desc} step {step + 1}")
        ranks.tick()
        weight = 1.0
        if batch is None:  # every image of the batch failed to decode (each was warned about)
            if not ranks.ddp:
                continue
            # Under DDP every rank takes every step (its gradients are exchanged): this one takes it on
            # its last batch with the loss weighted 0, so it adds nothing but stays in step.
            if last is None:
                raise DogbreedError(f"rank {ranks.rank}'s first batch held no readable image, and under "
                                    f"torchrun every rank takes every step; run `dogbreed data check` on the data set")
            batch, weight = last, 0.0
        last = batch
        x, y, _ = batch
        x, y = _to_device(x, device), y.to(device, non_blocking=True)
        with _autocast(device, amp_dtype):
            logits = model(x)
        summed = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing, reduction="sum")
        loss = summed.detach() / y.numel()  # this batch's mean, what the hooks and the epoch's numbers see
        optimizer.zero_grad(set_to_none=True)
        (summed * (weight / whole(step, y.numel()))).backward()
        hooks.after_backward(loss)
        optimizer.step()
        scheduler.step()
        hooks.after_step()
        if weight:
            loss_sum += summed.detach()
            correct += (logits.detach().argmax(1) == y).sum()
            seen += y.numel()
    bar.close()
    totals = torch.stack([loss_sum.double(), correct.double(), torch.tensor(float(seen), device=device, dtype=torch.double)])
    if ranks.ddp:  # the epoch's numbers over every rank's steps
        totals = ranks.all_sum(totals)
    loss_total, correct_total, seen = totals.tolist()
    if seen == 0:
        raise DogbreedError("no training image could be decoded in this epoch; run `dogbreed data check` on the data set")
    return {"loss": loss_total / seen, "accuracy": correct_total / seen}


def _global_sizes(batches: Iterable, ranks: Ranks) -> Callable[[int, int], float]:
    """What a step divides its summed loss by, given the step and how many images this rank holds.
    One process: the batch's own count (the mean). Under DDP, which averages the ranks' gradients:
    the whole batch's count over the ranks, so that average is one process's gradient on the whole
    batch however unevenly it was dealt (15 and 14 of 29 images; ``distributed.RankBatches``). An
    unreadable image still counts in the whole batch's planned count: it adds a zero to the mean.
    Batches without that plan are taken as dealt evenly."""
    plan = getattr(getattr(batches, "batch_sampler", None), "global_size", None) if ranks.ddp else None
    if plan is None:
        return lambda step, mine: mine
    return lambda step, mine: plan(step) / ranks.world


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    batches: Iterable,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    keep_predictions: bool = False,
    features_of: nn.Module | None = None,
    hooks: StepHooks = NO_HOOKS,
    phase: str = "eval",
    ranks: Ranks = ALONE,
) -> EvalResult:
    """Loss and accuracy over ``batches``; with ``keep_predictions`` also each image's logits,
    target and index, and with ``features_of`` (a module inside ``model``, or ``model`` itself) the
    input that module received for each image. Under DDP (``ranks.ddp``) each rank passes its share
    of the split, and the sums and, when kept, the per-image tensors are gathered from every rank, so every rank
    returns what one process would over the whole split (per-image tensors in the split's order)."""
    model.eval()
    seen_inputs: list[torch.Tensor] = []
    hook = None
    if features_of is not None:  # the same pass gives the embeddings: no second forward
        hook = features_of.register_forward_hook(lambda module, args, out: seen_inputs.append(args[0].float().cpu()))
    loss_sum = torch.zeros((), device=device)
    top1 = torch.zeros((), device=device, dtype=torch.long)
    top5 = torch.zeros((), device=device, dtype=torch.long)
    kept, seen = [], 0
    try:
        for batch in hooks.steps(batches, phase):
            ranks.tick()
            if batch is None:
                continue
            x, y, index = batch
            x, y = _to_device(x, device), y.to(device, non_blocking=True)
            with _autocast(device, amp_dtype):
                logits = model(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
            top1 += (ranked[:, 0] == y).sum()
            top5 += (ranked == y[:, None]).any(dim=1).sum()
            seen += y.numel()
            if keep_predictions:
                kept.append((logits.cpu(), y.cpu(), torch.as_tensor(index).cpu()))
    finally:
        if hook is not None:
            hook.remove()
    totals = torch.stack([loss_sum.double(), top1.double(), top5.double(),
                          torch.tensor(float(seen), device=device, dtype=torch.double)])
    if ranks.ddp:
        totals = ranks.all_sum(totals)
    loss_total, top1_total, top5_total, seen = totals.tolist()
    if seen == 0:
        raise DogbreedError("no evaluation image could be decoded; run `dogbreed data check` on the data set")
    result = EvalResult(loss_total / seen, top1_total / seen, top5_total / seen, int(seen))
    if keep_predictions:
        parts = [torch.cat(p) if p else None for p in zip(*kept)] if kept else [None, None, None]
        result.logits, result.targets, result.indices = parts
    if seen_inputs:
        result.features = torch.cat(seen_inputs)
    if keep_predictions and ranks.ddp:
        _gather_predictions(result, ranks)
    return result


def _gather_predictions(result: EvalResult, ranks: Ranks) -> None:
    """Every rank's kept tensors into ``result``, in the split's order (by image index; an image a
    padded sampler gave two ranks is kept once)."""
    mine = (result.logits, result.targets, result.indices, result.features)
    parts = [p for p in ranks.gathered(mine) if p[0] is not None]
    logits, targets, indices = (torch.cat([p[i] for p in parts]) for i in range(3))
    features = torch.cat([p[3] for p in parts]) if parts[0][3] is not None else None
    order = indices.argsort(stable=True)
    keep = torch.ones(len(order), dtype=torch.bool)
    keep[1:] = indices[order][1:] != indices[order][:-1]
    order = order[keep]
    result.logits, result.targets, result.indices = logits[order], targets[order], indices[order]
    result.features = None if features is None else features[order]


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, kind: str = "cosine"):
    if kind == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    total = max(1, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total)))


def format_epoch(row: dict, epochs: int) -> str:
    return (
        f"epoch {row['epoch']:>3}/{epochs}  train_loss {row['train_loss']:.4f}  train_acc {row['train_accuracy']:.4f}  "
        f"val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.4f}  val_top5 {row['val_top5']:.4f}  "
        f"lr {row['lr']:.2e}  {row['seconds']:.1f}s"
    )


def sagemaker_line(row: dict) -> str:
    """The ``key=value;`` form SageMaker's metric definitions scrape from the log."""
    keys = ("epoch", "train_loss", "val_loss", "val_accuracy", "val_top5")
    return " ".join(f"{k}={row[k]:.6g};" if k != "epoch" else f"epoch={row[k]};" for k in keys)


def fit(
    model: nn.Module,
    train_batches: Iterable,
    val_batches: Iterable,
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer,
    scheduler,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    label_smoothing: float = 0.0,
    set_train: Callable[[], None] | None = None,
    patience: int = 0,
    checkpoints: Checkpoints | None = None,
    state: FitState | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    progress: bool = False,
    hooks: StepHooks = NO_HOOKS,
    stepped: nn.Module | None = None,
    ranks: Ranks = ALONE,
) -> FitState:
    """Train for ``epochs`` (from ``state.epoch`` on); keep the best epoch by val_loss.

    ``checkpoints`` saves every epoch (and the best one) so that a killed run can resume.
    ``on_epoch`` gets each epoch's metrics row (for printing, tuning reports and pruning). ``hooks``
    time the steps and read debugger tensors; a rule with the stop action ends the epoch after the
    current step, and no epoch starts after it (under torchrun, after the epoch: every rank stops
    together). ``stepped`` is what a training step runs when it is not ``model`` (DDP around it);
    under DDP (``ranks.ddp``) the ranks share every epoch's steps and evaluation.
    """
    shuffle = getattr(train_batches, "generator", None)  # saved with the checkpoint: the same batch order on resume
    state = state or FitState()
    state.history = state.history or []
    # Under DDP a new order each epoch, the same on every rank (the rank's part of the global batches).
    sampler = next((s for s in (getattr(train_batches, name, None) for name in ("batch_sampler", "sampler"))
                    if hasattr(s, "set_epoch")), None)
    for epoch in range(state.epoch + 1, epochs + 1):
        stop = hooks.stop_requested
        if ranks.ddp:  # rank 0's rules decide for every rank
            stop = ranks.agree(stop)
        if stop:
            log.info("training stopped after epoch %d by rule %s (its action is stop)", epoch - 1, hooks.stopped_by)
            break
        start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        hooks.epoch_begin(epoch)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        train = train_one_epoch(
            stepped or model, train_batches, optimizer, scheduler, device=device, amp_dtype=amp_dtype,
            label_smoothing=label_smoothing, set_train=set_train, progress=progress, desc=f"epoch {epoch}/{epochs}",
            hooks=hooks, ranks=ranks,
        )
        val = evaluate(model, val_batches, device=device, amp_dtype=amp_dtype, hooks=hooks, ranks=ranks)
        row = {
            "epoch": epoch, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
            "val_loss": val.loss, "val_accuracy": val.accuracy, "val_top5": val.top5,
            "lr": lr, "seconds": time.perf_counter() - start,
        }
        if not (math.isfinite(train["loss"]) and math.isfinite(val.loss)):
            raise DogbreedError(f"training diverged in epoch {epoch} (train loss {train['loss']:.4g}, val_loss "
                                f"{val.loss:.4g}); lower the learning rate (it was {lr:.4g} at the start of the epoch)")
        state.history.append(row)
        state.epoch = epoch
        improved = val.loss < state.best_val_loss
        if improved:
            state.best_epoch, state.best_val_loss = epoch, val.loss
        if checkpoints is not None:
            with ranks.busy():  # rank 0 alone writes; under torchrun the others wait at the next exchange
                checkpoints.save(model, optimizer, scheduler, state, shuffle, improved=improved)
        hooks.epoch_end(row)
        if on_epoch:
            on_epoch(row)
        if patience and epoch - state.best_epoch >= patience:
            log.info("early stop: val_loss has not improved for %d epochs (best: epoch %d)", patience, state.best_epoch)
            break
    return state
