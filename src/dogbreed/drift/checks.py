"""The two-sample tests a monitor runs, a window against the baseline, each giving a statistic and
a p-value (scipy's tests where scipy has one):

- embedding drift: the maximum mean discrepancy (MMD, Gretton et al., 2012) of the embeddings,
  projected on the baseline's principal components, with a Gaussian kernel at the median distance;
  its p-value from a permutation test (scipy has no MMD; the permutations reuse one kernel matrix);
- breed shares, and each verdict's share: a chi-square test of homogeneity of the two samples'
  counts (``scipy.stats.chi2_contingency``; sparse breeds pooled so that no expected count is
  under 5), which counts the baseline's own sampling noise, unlike a goodness-of-fit test;
- top-1 probability, "not a dog" score, image size and brightness: two-sample Kolmogorov-Smirnov
  (``scipy.stats.ks_2samp``);
- unreadable inputs: their share against a threshold.

A window is judged by all of them at once, so each test is held to ``alpha / m`` (Bonferroni, m
the number of tests run): ``alpha`` is then the chance that a window from the baseline's own
distribution raises any violation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

MIN_EXPECTED = 5.0
DEFAULT_PERMUTATIONS = 2000  # the smallest p-value is 1/2001, under 0.01 shared by up to 20 tests


@dataclass
class Check:
    """One check of a window: ``statistic`` and ``p_value`` (None for a threshold check, whose
    ``value`` is compared to ``threshold``), and whether it is a violation."""

    name: str
    kind: str  # "baseline_drift_check" (a distribution moved) or "data_quality_check" (a share over a threshold)
    statistic: float | None
    p_value: float | None
    threshold: float
    violated: bool
    description: str
    value: float | None = None

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def mmd_test(x: np.ndarray, y: np.ndarray, permutations: int = DEFAULT_PERMUTATIONS,
             seed: int = 0) -> tuple[float, float]:
    """(MMD^2, permutation p-value) of samples ``x`` [n, d] and ``y`` [m, d]."""
    pooled = np.concatenate([x, y]).astype(np.float64)
    sq = (pooled ** 2).sum(axis=1)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2 * pooled @ pooled.T, 0.0)
    upper = dist[np.triu_indices(len(pooled), 1)]
    bandwidth = float(np.median(upper[upper > 0])) if np.any(upper > 0) else 1.0
    kernel = np.exp(-dist / bandwidth)
    n = len(x)

    def statistics(first: np.ndarray) -> np.ndarray:
        # biased MMD^2 from the kernel, mean k(x,x') + mean k(y,y') - 2 mean k(x,y), for a batch of
        # labellings at once: w^T K w with w = 1/n on x and -1/m on y
        w = np.where(first, 1.0 / n, -1.0 / (len(pooled) - n))
        return np.einsum("pi,pi->p", w @ kernel, w)

    labels = np.zeros(len(pooled), bool)
    labels[:n] = True
    observed = float(statistics(labels[None])[0])
    rng = np.random.default_rng(seed)
    beaten = 0
    for start in range(0, permutations, 256):
        batch = np.stack([rng.permutation(labels) for _ in range(min(256, permutations - start))])
        beaten += int((statistics(batch) >= observed).sum())
    return observed, (1 + beaten) / (1 + permutations)


def shares_test(base: dict, window: dict) -> tuple[float, float]:
    """(chi-square, p-value) of two samples' counts per category (dicts category -> count), with
    categories too sparse for the test pooled together."""
    keys = sorted(set(base) | set(window), key=str)
    table = np.array([[base.get(k, 0) for k in keys], [window.get(k, 0) for k in keys]], dtype=np.float64)
    table = _pooled(table)
    if table.shape[1] < 2:
        return 0.0, 1.0
    result = stats.chi2_contingency(table, correction=False)
    return float(result.statistic), float(result.pvalue)


def _pooled(table: np.ndarray) -> np.ndarray:
    """Columns whose expected count is under 5 in either row merged into one (and dropped when even
    that one stays under 5 and there are others)."""
    totals = table.sum(axis=1, keepdims=True)
    expected = totals * table.sum(axis=0, keepdims=True) / max(table.sum(), 1)
    sparse = (expected < MIN_EXPECTED).any(axis=0)
    kept = table[:, ~sparse]
    if sparse.any():
        rest = table[:, sparse].sum(axis=1, keepdims=True)
        rest_expected = totals * rest.sum() / max(table.sum(), 1)
        if (rest_expected >= MIN_EXPECTED).all() or kept.shape[1] < 2:
            kept = np.concatenate([kept, rest], axis=1)
    return kept[:, kept.sum(axis=0) > 0]


def ks_test(base: np.ndarray, window: np.ndarray) -> tuple[float, float]:
    """(Kolmogorov-Smirnov D, p-value) of two samples of one quantity."""
    if len(base) == 0 or len(window) == 0:
        return 0.0, 1.0
    result = stats.ks_2samp(base, window)
    return float(result.statistic), float(result.pvalue)


def proportion_test(base_hits: int, base_n: int, window_hits: int, window_n: int) -> tuple[float, float]:
    """(difference of the shares, p-value) of one share in two samples: the chi-square test of the
    2x2 table, or Fisher's exact test where an expected count is under 5."""
    if base_n == 0 or window_n == 0:
        return 0.0, 1.0
    table = np.array([[base_hits, base_n - base_hits], [window_hits, window_n - window_hits]], dtype=np.float64)
    difference = window_hits / window_n - base_hits / base_n
    if table.sum(axis=0).min() == 0:
        return difference, 1.0  # all or none in both: nothing moved
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    if expected.min() < MIN_EXPECTED:
        return difference, float(stats.fisher_exact(table.astype(int)).pvalue)
    return difference, float(stats.chi2_contingency(table, correction=False).pvalue)
