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
    logits = logits.double()
    lo, hi = math.log(0.05), math.log(20.0)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits, targets, math.exp(a)), nll(logits, targets, math.exp(b))
    for _ in range(32):  # the interval (6 in log T) shrinks by 0.618 a step: 32 steps leave under 1e-6 of T
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
    confidence, correct = top(probs, targets)
    return binned_ece(confidence, correct, bins).item()


def top(probs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's top probability and whether its top breed is right (1.0 or 0.0)."""
    confidence, predicted = probs.double().max(dim=1)
    return confidence, (predicted == targets).double()


def binned_ece(confidence: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS) -> torch.Tensor:
    """:func:`ece` from each image's confidence and correctness, over the last dimension: a stack
    of resamples (rounds, n) gives one ECE a round."""
    which = torch.clamp((confidence * bins).long(), max=bins - 1)
    gap = torch.zeros(*confidence.shape[:-1], bins, dtype=torch.float64)
    gap.scatter_add_(-1, which, confidence.double() - correct.double())  # per bin: confidences - number correct
    return gap.abs().sum(dim=-1) / max(1, confidence.shape[-1])


def bootstrap(statistic: Callable[..., torch.Tensor], *columns: torch.Tensor, rounds: int = 1000, level: float = 0.95,
              seed: int = 0) -> tuple[float, float]:
    """An interval for ``statistic`` from images resampled with replacement: the percentiles of the
    resampled values, re-centred on the estimate. ECE of a resample runs high (its duplicates fill
    bins unevenly), so uncentred percentiles can miss the estimate itself on small splits.

    ``columns`` are per-image values (first dimension: the images); ``statistic`` takes them with a
    leading dimension of resamples and returns one value each, so all rounds run as one tensor
    operation (a loop over 1,000 resamples of the whole probability matrix took seconds a run)."""
    generator = torch.Generator().manual_seed(seed)
    n = columns[0].shape[0]
    resamples = torch.randint(n, (rounds, n), generator=generator)
    values = statistic(*(column[resamples] for column in columns)).double().numpy()
    values -= values.mean() - statistic(*(column[None] for column in columns)).item()
    tail = (1 - level) / 2
    return max(0.0, float(np.quantile(values, tail))), float(np.quantile(values, 1 - tail))


def ece_interval(probs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """A 95% bootstrap interval for :func:`ece`."""
    return bootstrap(binned_ece, *top(probs, targets))


def nll_interval(probs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """A 95% bootstrap interval for the mean negative log-likelihood of the targets."""
    losses = -torch.log(probs.double().gather(1, targets[:, None]).squeeze(1).clamp_min(1e-12))
    return bootstrap(lambda x: x.mean(dim=-1), losses)


def report(valid_logits: torch.Tensor, valid_targets: torch.Tensor, test_logits: torch.Tensor,
           test_targets: torch.Tensor) -> dict:
    """Fit the temperature on valid; NLL and ECE on test before and after, with 95% intervals."""
    temperature = fit_temperature(valid_logits, valid_targets)
    out: dict = {"temperature": round(temperature, 6), "ece_bins": ECE_BINS, "test_n": int(test_targets.numel())}
    for when, t in (("before", 1.0), ("after", temperature)):
        probs = torch.softmax(test_logits.double() / t, dim=1)
        out[f"test_nll_{when}"] = round(nll(test_logits, test_targets, t), 6)
        out[f"test_ece_{when}"] = round(ece(probs, test_targets), 6)
        out[f"test_ece_{when}_ci95"] = [round(v, 6) for v in ece_interval(probs, test_targets)]
        out[f"test_nll_{when}_ci95"] = [round(v, 6) for v in nll_interval(probs, test_targets)]
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
    confidence, correct = top(probs, targets)
    which = torch.clamp((confidence * bins).long(), max=bins - 1).numpy()
    accuracy = [correct[torch.from_numpy(which == b)].mean().item() if (which == b).any() else np.nan for b in range(bins)]
    share = np.bincount(which, minlength=bins) / max(1, len(which))
    return accuracy, share, ece(probs, targets, bins)
