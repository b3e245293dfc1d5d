"""Seed statistics: how precisely a configuration is measured, and which difference it can resolve.

For one configuration run with n seeds: mean, sample standard deviation, and the 95% confidence
interval of the mean (Student t, n - 1 degrees of freedom). For comparing two configurations run
with n seeds each, the minimum detectable difference (MDD) of a two-sided two-sample t-test at
level alpha with the given power, assuming both share the measured standard deviation:

    MDD = (t_{1 - alpha/2, 2n-2} + t_{power, 2n-2}) * s * sqrt(2 / n)

A difference between two configurations smaller than the MDD may be real but is not resolved by
n seeds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

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
