"""Seed statistics on hand-made numbers (t quantiles from a printed t table)."""

import math

import pytest

from vlpbench.stats import (compare_seeds, difference_interval, minimum_detectable_difference, paired_difference,
                            pooled_std, seed_stats)
from vlpbench.summary import format_comparison, format_summary, summarize

T975 = {4: 2.7764, 8: 2.3060}  # t_{0.975, df}
T80 = {8: 0.8889}               # t_{0.80, df}


def test_mean_std_and_95_interval():
    s = seed_stats([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s.n == 5 and s.mean == 3.0
    assert s.std == pytest.approx(math.sqrt(2.5))
    half = T975[4] * math.sqrt(2.5) / math.sqrt(5)  # 1.9632
    assert s.ci95_low == pytest.approx(3.0 - half, abs=1e-3) and s.ci95_high == pytest.approx(3.0 + half, abs=1e-3)


def test_minimum_detectable_difference():
    # 5 seeds per configuration, std 1.5: (2.3060 + 0.8889) * 1.5 * sqrt(2/5) = 3.031
    assert minimum_detectable_difference(1.5, 5) == pytest.approx((T975[8] + T80[8]) * 1.5 * math.sqrt(0.4), abs=1e-3)
    assert seed_stats([1.0, 2.0, 3.0, 4.0, 5.0]).mdd == pytest.approx(
        (T975[8] + T80[8]) * math.sqrt(2.5) * math.sqrt(0.4), abs=1e-3)
    assert math.isnan(minimum_detectable_difference(1.0, 1))


def test_single_seed_has_no_spread():
    s = seed_stats([7.0])
    assert s.mean == 7.0 and math.isnan(s.std) and math.isnan(s.ci95_low) and math.isnan(s.mdd)


def test_pooled_std_and_difference_interval():
    # groups with means 2 and 5, squared deviations 2 + 2 over 2 + 2 degrees of freedom
    assert pooled_std([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]) == pytest.approx(1.0)
    diff, low, high = difference_interval([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    # Welch: se = sqrt(1/3 + 1/3), df = 4 -> half width 2.7764 * 0.8165 = 2.267
    assert diff == 3.0 and low == pytest.approx(3.0 - 2.2669, abs=1e-3) and high == pytest.approx(3.0 + 2.2669, abs=1e-3)


def test_summary_of_runs_lists_each_metric_with_its_seeds():
    def result(seed, r_mean):
        return {"experiment": "x", "run_dir": f"runs/x/{seed}", "seed": seed, "complete": True,
                "train": {"seconds": 300.0},
                "retrieval": {"itm": {"r_mean": r_mean, "txt_r1": 1.0, "img_r1": 2.0}, "itc": {"r_mean": r_mean - 1},
                              "ranking": "ITC top-16, re-ranked by ITM", "k_test": 16, "seconds": 30.0}}
    summary = summarize([result(0, 40.0), result(1, 42.0), result(2, 44.0)])
    assert summary["seeds"] == [0, 1, 2] and summary["ranking"] == ["ITC top-16, re-ranked by ITM"]
    assert summary["metrics"]["r_mean"]["values"] == [40.0, 42.0, 44.0]
    assert summary["metrics"]["r_mean"]["mean"] == 42.0 and summary["metrics"]["r_mean"]["std"] == 2.0
    text = format_summary(summary)
    assert "3 seeds [0, 1, 2]" in text and "40.00 42.00 44.00" in text


def test_summary_reports_the_spread_between_test_folds():
    def result(seed, fold_std):
        return {"experiment": "x", "run_dir": f"runs/x/{seed}", "seed": seed, "complete": True,
                "train": {"seconds": 1.0},
                "retrieval": {"itm": {"r_mean": 40.0, "txt_r1": 1.0, "img_r1": 2.0}, "itc": None, "k_test": 16,
                              "seconds": 1.0, "folds": {"count": 3, "itm_r_mean_std": fold_std}}}
    summary = summarize([result(0, 0.3), result(1, 0.5)])
    assert summary["metrics"]["r_mean fold std"]["mean"] == pytest.approx(0.4)
    assert "the test split's own sampling noise for one fold" in format_summary(summary)


def test_comparison_reports_the_difference_with_its_interval():
    def result(experiment, seed, r_mean):
        return {"experiment": experiment, "run_dir": f"runs/{experiment}/{seed}", "seed": seed, "complete": True,
                "train": {"seconds": 1.0}, "retrieval": {"itm": {"r_mean": r_mean, "txt_r1": 0.0, "img_r1": 0.0},
                                                         "itc": {"r_mean": r_mean}, "k_test": 16, "seconds": 1.0}}
    a = summarize([result("a", s, v) for s, v in enumerate([1.0, 2.0, 3.0])])
    b = summarize([result("b", s + 3, v) for s, v in enumerate([4.0, 5.0, 6.0])])  # other seeds: Welch
    line = next(row for row in format_comparison(a, b).splitlines() if row.startswith("r_mean "))
    # difference 3, Welch half width 2.7764 * sqrt(2/3) = 2.267; MDD (2.7764 + 0.9410) * 1 * sqrt(2/3) = 3.035
    assert line.split() == ["r_mean", "3.00", "[0.73,", "5.27]", "welch", "nan", "3.04", "yes"]
    paired = summarize([result("b", s, v) for s, v in enumerate([4.5, 5.0, 6.5])])  # seeds 0, 1, 2 as a's
    line = next(row for row in format_comparison(a, paired).splitlines() if row.startswith("r_mean "))
    # differences 3.5, 3, 3.5: mean 3.333, s_d 0.2887, half 4.3027 * 0.2887 / sqrt(3) = 0.717
    assert line.split()[:5] == ["r_mean", "3.33", "[2.62,", "4.05]", "paired"]


def test_paired_difference_on_hand_made_seeds():
    # seeds 0, 1, 2: differences 1, 2, 2 -> mean 5/3, s_d = sqrt(1/3), t(0.975, 2) = 4.302653
    d = paired_difference([1.0, 2.0, 3.0], [2.0, 4.0, 5.0])
    half = 4.302653 * math.sqrt(1 / 3) / math.sqrt(3)
    assert d.test == "paired" and d.n == 3
    assert d.delta == pytest.approx(5 / 3)
    assert (d.ci95_low, d.ci95_high) == (pytest.approx(5 / 3 - half, abs=1e-5), pytest.approx(5 / 3 + half, abs=1e-5))
    assert d.correlation == pytest.approx(1.5 / math.sqrt(7 / 3))  # cov 1.5, var 1 and 7/3
    assert d.mdd == pytest.approx((4.302653 + 1.060660) * math.sqrt(1 / 3) / math.sqrt(3), abs=1e-5)
    assert d.significant


def test_pairing_removes_the_shared_seed_noise_welch_keeps():
    # a seed effect of +-10 shared by both sides, a true difference of 1 (+-0.1)
    a, b = [50.0, 40.0, 60.0, 45.0, 55.0], [51.1, 40.9, 61.0, 46.0, 55.9]
    paired = compare_seeds(dict(enumerate(a)), dict(enumerate(b)))
    welch = compare_seeds(dict(enumerate(a)), {s + 10: v for s, v in enumerate(b)})  # other seeds: unpaired
    assert paired.test == "paired" and welch.test == "welch"
    assert paired.delta == pytest.approx(welch.delta) == pytest.approx(0.98)
    assert paired.significant and not welch.significant
    assert paired.correlation > 0.99 and math.isnan(welch.correlation)
    assert paired.mdd < 0.3 < 10 < welch.mdd
    assert compare_seeds({0: 1.0}, {0: 2.0, 1: 3.0}) is None  # fewer than 2 seeds on a side
