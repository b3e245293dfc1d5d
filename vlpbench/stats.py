"""Seed statistics: how precisely a configuration is measured, and which difference it can resolve.

For one configuration run with n seeds: mean, sample standard deviation, and the 95% confidence
interval of the mean (Student t, n - 1 degrees of freedom). For comparing two configurations run
with n seeds each, the minimum detectable difference (MDD) of a two-sided two-sample t-test at
level alpha with the given power, assuming both share the measured standard deviation:

    MDD = (t_{1 - alpha/2, 2n-2} + t_{power, 2n-2}) * s * sqrt(2 / n)

A difference between two configurations smaller than the MDD may be real but is not resolved by
n seeds.

Two configurations run with the same seeds share every random draw the seed decides (common
random numbers), so their seeds pair: the difference is measured per seed, its interval is a
one-sample t interval over the n per-seed differences (n - 1 degrees of freedom), and the paired
MDD is ``(t_{1 - alpha/2, n-1} + t_{power, n-1}) * s_d / sqrt(n)``, s_d the differences' std. With
correlation rho between the sides this is about sqrt(1 - rho) of the unpaired MDD. Where the seeds
differ, the difference is Welch's. ``compare_seeds`` picks the test and says which it used.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95
POWER = 0.8


@dataclass(frozen=True)
class SeedStats:
    n: int
    mean: float
    std: float            # sample standard deviation (n - 1 in the denominator)
    ci95_low: float
    ci95_high: float
    mdd: float            # minimum detectable difference to another configuration with n seeds

    def as_dict(self) -> dict:
        return asdict(self)


def t_quantile(q: float, df: int) -> float:
    return float(scipy_stats.t.ppf(q, df))


def minimum_detectable_difference(std: float, n: int, alpha: float = 1 - CONFIDENCE, power: float = POWER) -> float:
    """Two-sample, two-sided: the difference n seeds per configuration resolve with ``power``."""
    if n < 2:
        return math.nan
    df = 2 * n - 2
    return (t_quantile(1 - alpha / 2, df) + t_quantile(power, df)) * std * math.sqrt(2 / n)


def seed_stats(values: list[float]) -> SeedStats:
    """Mean, std, 95% interval of the mean and MDD of one metric over seeds (NaN where n < 2)."""
    n = len(values)
    if n == 0:
        raise ValueError("seed_stats needs at least one value")
    mean = sum(values) / n
    if n < 2:
        return SeedStats(n, mean, math.nan, math.nan, math.nan, math.nan)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(1 - (1 - CONFIDENCE) / 2, n - 1) * std / math.sqrt(n)
    return SeedStats(n, mean, std, mean - half, mean + half, minimum_detectable_difference(std, n))


def pooled_std(groups: list[list[float]]) -> float:
    """The standard deviation pooled over configurations (each with its own mean)."""
    ss = sum(sum((v - sum(g) / len(g)) ** 2 for v in g) for g in groups)
    df = sum(len(g) - 1 for g in groups)
    return math.sqrt(ss / df) if df > 0 else math.nan


@dataclass(frozen=True)
class Difference:
    """``b - a`` over seeds, and the test that measured it."""
    test: str             # "paired" (the same seeds on both sides) or "welch"
    n: int                # pairs (paired); the smaller side's seeds (welch)
    delta: float
    ci95_low: float
    ci95_high: float
    correlation: float    # between the sides over the paired seeds (NaN for welch)
    mdd: float            # the smallest difference this design resolves with POWER

    @property
    def significant(self) -> bool:
        return self.ci95_low > 0 or self.ci95_high < 0

    def as_dict(self) -> dict:
        return {**asdict(self), "significant": self.significant}


def paired_difference(a: list[float], b: list[float]) -> Difference:
    """``b - a`` seed by seed (``a[i]`` and ``b[i]`` share a seed): mean, t interval, correlation, MDD."""
    n = len(a)
    diffs = [y - x for x, y in zip(a, b)]
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = t_quantile(1 - (1 - CONFIDENCE) / 2, n - 1) * sd / math.sqrt(n)
    mdd = (t_quantile(1 - (1 - CONFIDENCE) / 2, n - 1) + t_quantile(POWER, n - 1)) * sd / math.sqrt(n)
    return Difference("paired", n, mean, mean - half, mean + half, correlation(a, b), mdd)


def correlation(a: list[float], b: list[float]) -> float:
    """Pearson's r (NaN where a side is constant)."""
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    va, vb = sum((x - ma) ** 2 for x in a), sum((y - mb) ** 2 for y in b)
    return cov / math.sqrt(va * vb) if va > 0 and vb > 0 else math.nan


def welch_difference(a: list[float], b: list[float]) -> Difference:
    delta, low, high = difference_interval(a, b)
    n = min(len(a), len(b))
    return Difference("welch", n, delta, low, high, math.nan, minimum_detectable_difference(pooled_std([a, b]), n))


def compare_seeds(a: dict[int, float], b: dict[int, float]) -> Difference | None:
    """``b - a`` for per-seed values: paired when both sides have the same seeds, else Welch;
    None unless each side has at least 2 seeds."""
    if len(a) < 2 or len(b) < 2:
        return None
    if set(a) == set(b):
        seeds = sorted(a)
        return paired_difference([a[s] for s in seeds], [b[s] for s in seeds])
    return welch_difference(list(a.values()), list(b.values()))


def difference_interval(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Mean of ``b - a`` and its 95% interval (Welch's t), for two configurations' seeds."""
    na, nb = len(a), len(b)
    ma, mb = sum(a) / na, sum(b) / nb
    va = sum((v - ma) ** 2 for v in a) / (na - 1)
    vb = sum((v - mb) ** 2 for v in b) / (nb - 1)
    se2 = va / na + vb / nb
    if se2 == 0:
        return mb - ma, mb - ma, mb - ma
    df = se2 ** 2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    half = t_quantile(1 - (1 - CONFIDENCE) / 2, df) * math.sqrt(se2)
    return mb - ma, mb - ma - half, mb - ma + half


def roc_auc(positive, negative) -> float:
    """P(a random positive scores above a random negative), ties counting half (Mann-Whitney U)."""
    positive, negative = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    if not len(positive) or not len(negative):
        return float("nan")
    ranks = scipy_stats.rankdata(np.concatenate([positive, negative]))
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
