"""Run verdicts (issue 21.3-4) on hand-made metric lines."""

import math

import pytest

from vlpbench.diagnostics import flatness, itm_verdict, label_entropy, last_quarter


def lines(values, key="loss_itm"):
    return [{"step": 10 * (i + 1), key: v} for i, v in enumerate(values)]


def test_the_label_prior_of_one_positive_to_two_negatives_costs_0_6365_nats():
    assert label_entropy(1 / 3) == pytest.approx(0.636514, abs=1e-6)
    assert label_entropy(1 / 2) == pytest.approx(math.log(2))


def test_last_quarter_takes_the_logged_steps_of_the_final_quarter():
    # steps 10..110: the last quarter of the span 100 starts at step 85
    assert [s for s, _ in last_quarter(lines([1.0] * 11), "loss_itm")] == [90, 100, 110]
    assert last_quarter(lines([1.0] * 4, key="loss"), "loss_itm") == []


def test_an_itm_head_at_its_prior_has_not_learned_one_below_it_has():
    at_prior = itm_verdict(lines([0.70] * 6 + [0.6365] * 6), 1 / 3, margin=0.05)
    assert at_prior["itm_learned"] is False and at_prior["final_loss_itm"] == pytest.approx(0.6365)
    learned = itm_verdict(lines([0.6365] * 6 + [0.30] * 6), 1 / 3, margin=0.05)
    assert learned["itm_learned"] is True and learned["prior_entropy"] == pytest.approx(0.6365)
    assert itm_verdict(lines([0.5] * 4, key="loss"), 1 / 3, 0.05) is None  # no ITM loss logged


def test_a_falling_curve_has_not_flattened_a_level_one_has():
    falling = flatness(lines([2.0 - 0.1 * i for i in range(11)], key="loss"), tolerance=0.01)
    # last quarter: steps 90, 100, 110 at 1.2, 1.1, 1.0: -0.01 per step x 20 steps / 1.1 = -0.1818
    assert falling["flattened"] is False
    assert falling["relative_change_last_quarter"] == pytest.approx(-0.2 / 1.1, abs=1e-4)
    level = flatness(lines([2.0 - 0.1 * i for i in range(6)] + [1.5] * 12, key="loss"), tolerance=0.01)
    assert level["flattened"] is True and level["slope_per_1000_steps"] == pytest.approx(0.0)
