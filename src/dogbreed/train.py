"""One training loop for both paths: ``fit`` calls ``train_one_epoch`` and ``evaluate`` on whatever
model and batches it is given, a bare head on cached embeddings or the whole network on images."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from dogbreed.errors import DogbreedError
from dogbreed.files import atomic_torch_save
from dogbreed.monitor.monitor import NULL_MONITOR, NullMonitor

log = logging.getLogger(__name__)

METRIC_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_top5", "lr", "seconds")


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DogbreedError(f"device {name} was asked for but no CUDA GPU is visible; use --device cpu")
    return device


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def amp_dtype_for(device: torch.device, mode: str) -> torch.dtype | None:
    """bf16 autocast where the hardware runs it natively (Ampere+ GPUs, CPUs with AVX512-BF16/AMX)."""
    if mode == "off":
        return None
    if mode == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16() else None


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
    predictions: torch.Tensor | None = None  # (N,) top-1 class, when asked for
    targets: torch.Tensor | None = None


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
    monitor: NullMonitor = NULL_MONITOR,
) -> dict[str, float]:
    (set_train or model.train)()
    # Running sums stay on the device: one host sync per epoch, not one per step.
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    bar = tqdm(total=len(batches), desc=desc, unit="batch", disable=not progress, leave=False)
    for batch in monitor.steps(batches, "train"):
        bar.update()
        if batch is None:  # every image of the batch failed to decode (each was warned about)
            continue
        x, y, _ = batch
        x, y = _to_device(x, device), y.to(device, non_blocking=True)
        with _autocast(device, amp_dtype):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        monitor.after_backward(loss)
        optimizer.step()
        scheduler.step()
        monitor.after_step()
        loss_sum += loss.detach() * y.numel()
        correct += (logits.detach().argmax(1) == y).sum()
        seen += y.numel()
    bar.close()
    if seen == 0:
        raise DogbreedError("no training image could be decoded in this epoch; run `dogbreed data check` on the data set")
    return {"loss": loss_sum.item() / seen, "accuracy": correct.item() / seen}


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    batches: Iterable,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    keep_predictions: bool = False,
    monitor: NullMonitor = NULL_MONITOR,
    phase: str = "eval",
) -> EvalResult:
    model.eval()
    loss_sum = torch.zeros((), device=device)
    top1 = torch.zeros((), device=device, dtype=torch.long)
    top5 = torch.zeros((), device=device, dtype=torch.long)
    preds, targets, seen = [], [], 0
    for batch in monitor.steps(batches, phase):
        if batch is None:
            continue
        x, y, _ = batch
        x, y = _to_device(x, device), y.to(device, non_blocking=True)
        with _autocast(device, amp_dtype):
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
        top1 += (ranked[:, 0] == y).sum()
        top5 += (ranked == y[:, None]).any(dim=1).sum()
        seen += y.numel()
        if keep_predictions:
            preds.append(ranked[:, 0].cpu())
            targets.append(y.cpu())
    if seen == 0:
        raise DogbreedError("no evaluation image could be decoded; run `dogbreed data check` on the data set")
    return EvalResult(
        loss_sum.item() / seen, top1.item() / seen, top5.item() / seen, seen,
        torch.cat(preds) if keep_predictions else None,
        torch.cat(targets) if keep_predictions else None,
    )


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


@dataclass
class FitState:
    """Everything needed to continue a run after a kill; saved atomically every epoch."""

    epoch: int = 0  # last finished epoch
    history: list[dict] | None = None
    best_epoch: int = 0
    best_val_loss: float = math.inf

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "history": self.history or [], "best_epoch": self.best_epoch,
                "best_val_loss": self.best_val_loss}


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
    checkpoint_dir: Path | None = None,
    checkpoint_extra: dict | None = None,
    state: FitState | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    progress: bool = False,
    monitor: NullMonitor = NULL_MONITOR,
) -> FitState:
    """Train for ``epochs`` (from ``state.epoch`` on); keep the best epoch by val_loss.

    ``checkpoint_dir`` receives ``last.pt`` (model, optimizer, schedule, shuffle state, fit state)
    every epoch and ``best.pt`` (model) whenever val_loss improves, each written atomically with
    ``checkpoint_extra`` (the run's config). ``on_epoch`` gets each epoch's metrics row (for
    printing, tuning reports and pruning). ``monitor`` times the steps and reads debugger tensors;
    a rule with the stop action ends the epoch after the current step, and no epoch starts after it.
    """
    extra = checkpoint_extra or {}
    shuffle = getattr(train_batches, "generator", None)  # restored on resume: the same batch order
    state = state or FitState()
    state.history = state.history or []
    for epoch in range(state.epoch + 1, epochs + 1):
        if monitor.stop_requested:
            log.info("training stopped after epoch %d by rule %s (its action is stop)", epoch - 1, monitor.stopped_by)
            break
        start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        monitor.epoch_begin(epoch)
        train = train_one_epoch(
            model, train_batches, optimizer, scheduler, device=device, amp_dtype=amp_dtype,
            label_smoothing=label_smoothing, set_train=set_train, progress=progress, desc=f"epoch {epoch}/{epochs}",
            monitor=monitor,
        )
        val = evaluate(model, val_batches, device=device, amp_dtype=amp_dtype, monitor=monitor)
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
        if checkpoint_dir is not None:
            if improved:
                atomic_torch_save({**extra, "epoch": epoch, "model": model.state_dict()}, checkpoint_dir / "best.pt")
            atomic_torch_save(
                {**extra, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "state": state.to_dict(),
                 "shuffle": shuffle.get_state() if shuffle is not None else None},
                checkpoint_dir / "last.pt",
            )
        monitor.epoch_end(row)
        if on_epoch:
            on_epoch(row)
        if patience and epoch - state.best_epoch >= patience:
            log.info("early stop: val_loss has not improved for %d epochs (best: epoch %d)", patience, state.best_epoch)
            break
    return state
