"""The Bayesian comparison: a real bambi fit, checked against the exact Beta posterior, and its verdicts."""

import numpy as np
import pandas as pd
import pytest

from finetox.compare import LESS, MORE, NONE, FitSettings, compare, verdict
from finetox.config import Comparison

SETTINGS = FitSettings(hdi_prob=0.95, prior_sigma=1.5, draws=1000, tune=1000, chains=2, seed=3)
PAIR = Comparison("a_vs_b", "instruct_vs_finetuned", "a", "b")


def counts(rows):
    return pd.DataFrame(rows, columns=["variant", "subset", "n", "toxic"])


@pytest.fixture(scope="module")
def fitted():
    table = counts([
        ("a", "toxic", 400, 20), ("a", "nontoxic", 400, 4), ("a", "all", 800, 24),
        ("b", "toxic", 400, 80), ("b", "nontoxic", 400, 3), ("b", "all", 800, 83),
    ])
    return compare(table, PAIR, SETTINGS)


def test_verdicts_follow_the_hdi(fitted):
    rows = fitted[0].set_index("subset")
    assert rows.loc["toxic", "verdict"] == MORE
    assert rows.loc["nontoxic", "verdict"] == NONE
    assert rows.loc["toxic", "hdi_low"] > 0 and rows.loc["nontoxic", "hdi_low"] < 0 < rows.loc["nontoxic", "hdi_high"]
    assert rows.loc["toxic", "toxic_treatment"] == 80 and rows.loc["toxic", "n_baseline"] == 400
    assert (rows["r_hat"] < 1.01).all() and (rows["ess_bulk"] > 400).all()
    assert list(rows.index) == ["nontoxic", "toxic", "all"]


def test_posterior_difference_agrees_with_the_beta_posterior(fitted):
    """With this much data the prior hardly matters: the exact Beta(1 + k, 1 + n - k) difference is the reference."""
    rows = fitted[0].set_index("subset")
    rng = np.random.default_rng(0)
    exact = rng.beta(81, 321, 200_000) - rng.beta(21, 381, 200_000)
    assert rows.loc["toxic", "diff_mean"] == pytest.approx(exact.mean(), abs=0.005)
    low, high = np.quantile(exact, [0.025, 0.975])
    assert rows.loc["toxic", "hdi_low"] == pytest.approx(low, abs=0.01)
    assert rows.loc["toxic", "hdi_high"] == pytest.approx(high, abs=0.01)


def test_less_toxic_and_same_seed_same_numbers():
    table = counts([("a", "all", 300, 60), ("b", "all", 300, 15)])
    first, _ = compare(table, PAIR, SETTINGS)
    again, _ = compare(table, PAIR, SETTINGS)
    assert first["verdict"].item() == LESS
    pd.testing.assert_frame_equal(first, again)


def test_verdict_rule():
    assert verdict(0.01, 0.2) == MORE and verdict(-0.2, -0.01) == LESS and verdict(-0.01, 0.01) == NONE
