"""Probabilities that mean what they say: one temperature fitted on the validation split (Guo et
al., 2017: divide the logits by T, choose T for the lowest NLL), and the measures that show it
worked on the test split: NLL and top-label ECE, each with a bootstrap interval (valid and test
are small: about 56 images a bin on dogImages).

The inference path applies the temperature (``runtime/pipeline.py``); this module fits and
measures it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

ECE_BINS = 15


def nll(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the targets under softmax(logits / T)."""
    return F.cross_entropy(logits.double() / temperature, targets).item()


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The T > 0 with the lowest validation NLL. NLL is convex in 1/T, so a golden-section search
    over log T finds its one minimum; T is searched in [0.05, 20]."""
    lo, hi = math.log(0.05), math.log(20.0)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits, targets, math.exp(a)), nll(logits, targets, math.exp(b))
    for _ in range(60):  # the interval shrinks by 0.618 a step: 60 steps leave far below 1e-6 of it
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(logits, targets, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(logits, targets, math.exp(b))
    return math.exp((lo + hi) / 2)


def ece(probs: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error: over equal-width bins of the top probability, the
    gap between that confidence and the accuracy, weighted by the share of images in the bin
    (that is, the sum over bins of |sum of confidences - number correct| / all images)."""
    confidence, predicted = probs.max(dim=1)
    which = torch.clamp((confidence * bins).long(), max=bins - 1)
    confident = torch.bincount(which, weights=confidence.double(), minlength=bins)
    correct = torch.bincount(which, weights=(predicted == targets).double(), minlength=bins)
    return (confident - correct).abs().sum().item() / max(1, targets.numel())


def bootstrap(metric: Callable[[torch.Tensor, torch.Tensor], float], probs: torch.Tensor, targets: torch.Tensor, *,
              rounds: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """An interval for ``metric`` from images resampled with replacement: the percentiles of the
    resampled values, re-centred on the estimate. ECE of a resample runs high (its duplicates fill
    bins unevenly), so uncentred percentiles can miss the estimate itself on small splits."""
    generator = torch.Generator().manual_seed(seed)
    n = targets.numel()
    values = np.array([metric(probs[idx], targets[idx])
                       for idx in (torch.randint(n, (n,), generator=generator) for _ in range(rounds))])
    values -= values.mean() - metric(probs, targets)
    tail = (1 - level) / 2
    return max(0.0, float(np.quantile(values, tail))), float(np.quantile(values, 1 - tail))


def report(valid_logits: torch.Tensor, valid_targets: torch.Tensor, test_logits: torch.Tensor,
           test_targets: torch.Tensor) -> dict:
    """Fit the temperature on valid; NLL and ECE on test before and after, with 95% intervals."""
    temperature = fit_temperature(valid_logits, valid_targets)
    out: dict = {"temperature": round(temperature, 6), "ece_bins": ECE_BINS, "test_n": int(test_targets.numel())}
    for when, t in (("before", 1.0), ("after", temperature)):
        probs = torch.softmax(test_logits.double() / t, dim=1)
        out[f"test_nll_{when}"] = round(nll(test_logits, test_targets, t), 6)
        out[f"test_ece_{when}"] = round(ece(probs, test_targets), 6)
        low, high = bootstrap(ece, probs, test_targets)
        out[f"test_ece_{when}_ci95"] = [round(low, 6), round(high, 6)]
        low, high = bootstrap(lambda p, y: F.nll_loss(torch.log(p.clamp_min(1e-12)), y).item(), probs, test_targets)
        out[f"test_nll_{when}_ci95"] = [round(low, 6), round(high, 6)]
    return out


def summary(doc: dict) -> str:
    """One line for the run's log."""
    return (f"calibration: temperature {doc['temperature']:.3g}; test NLL {doc['test_nll_before']:.4f} -> "
            f"{doc['test_nll_after']:.4f}, ECE {100 * doc['test_ece_before']:.1f}% -> {100 * doc['test_ece_after']:.1f}% "
            f"(95% interval {100 * doc['test_ece_after_ci95'][0]:.1f}-{100 * doc['test_ece_after_ci95'][1]:.1f}%)")


def reliability(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                bins: int = ECE_BINS) -> tuple[list[float], np.ndarray, float]:
    """Under softmax(logits / T): the accuracy of each equal-width bin of the top probability (NaN
    where a bin is empty), each bin's share of the images, and the ECE; the reliability diagram
    draws them (``plots.plot_reliability``)."""
    probs = torch.softmax(logits.double() / temperature, dim=1)
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == targets).double()
    which = torch.clamp((confidence * bins).long(), max=bins - 1).numpy()
    accuracy = [correct[torch.from_numpy(which == b)].mean().item() if (which == b).any() else np.nan for b in range(bins)]
    share = np.bincount(which, minlength=bins) / max(1, len(which))
    return accuracy, share, ece(probs, targets, bins)
