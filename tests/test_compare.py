"""The Bayesian comparison: real bambi/PyMC fits, checked against the exact Beta posterior; verdicts; gates."""

import numpy as np
import pandas as pd
import pytest

from finetox.compare import (EQUIVALENT, LESS, MORE, NONE, UNDECIDED, DiagnosticsError, FitSettings, compare_rates,
                             compare_scores, exact_rate_difference, fit_rates, rate_draws, verdict)
from finetox.config import Comparison
from finetox.metrics import comparison_units, toxicity_metrics

SETTINGS = FitSettings(hdi_prob=0.95, prior="normal", prior_sigma=1.5, rope=0.01, draws=1000, tune=1000, chains=2, seed=3)
UNIFORM = FitSettings(hdi_prob=0.95, prior="uniform", prior_sigma=1.5, rope=None, draws=2000, tune=1000, chains=2, seed=4)
PAIR = Comparison("a_vs_b", "instruct_vs_finetuned", "a", "b")


def scores_for(counts, rng):
    """Per-continuation scores with exactly the given toxic counts (one sample per prompt)."""
    rows = []
    for variant, subset, n, toxic in counts:
        values = np.concatenate([rng.uniform(0.6, 1.0, toxic), rng.uniform(0.0, 0.3, n - toxic)])
        rows += [(variant, subset, f"{subset}-{i}", 0, v) for i, v in enumerate(values)]
    return pd.DataFrame(rows, columns=["variant", "subset", "prompt_id", "sample", "score"])


def run(counts, settings=SETTINGS, seed=0):
    scores = scores_for(counts, np.random.default_rng(seed))
    metrics = toxicity_metrics(scores, "p", "study", "s", 0.5)
    return compare_rates(comparison_units(metrics), [PAIR], settings)


COUNTS = [("a", "toxic", 400, 20), ("a", "nontoxic", 3000, 2), ("b", "toxic", 400, 80), ("b", "nontoxic", 3000, 3)]


def test_verdicts_and_columns():
    rows = run(COUNTS)[0].set_index("subset")
    assert list(rows.index) == ["nontoxic", "toxic", "all"]
    assert rows.loc["toxic", "verdict"] == MORE and rows.loc["toxic", "prob_direction"] > 0.999
    assert rows.loc["nontoxic", "verdict"] == EQUIVALENT  # the HDI lies within +-1 point
    assert rows.loc["toxic", "toxic_treatment"] == 80 and rows.loc["all", "n_baseline"] == 3400
    assert (rows["unit"] == "continuation").all() and (rows["verdict_from"] == "rates (binomial)").all()
    assert rows.loc["toxic", "ratio_hdi_low"] > 1
    assert (rows["r_hat"] <= 1.01).all() and (rows["ess_bulk"] >= 400).all() and (rows["divergences"] == 0).all()


def test_best_on_scores_sees_the_difference_and_pairs_the_prompts():
    """BEST: the treatment's per-prompt scores are 0.2 higher on the toxic prompts, equal elsewhere."""
    rng = np.random.default_rng(5)
    rows = []
    for subset, shift in (("toxic", 0.2), ("nontoxic", 0.0)):
        base = rng.beta(2, 8, 150)
        for variant, values in (("a", base), ("b", np.clip(base + shift + rng.normal(0, 0.05, 150), 0, 1))):
            rows += [(variant, subset, f"{subset}-{i}", v) for i, v in enumerate(values)]
    means = pd.DataFrame(rows, columns=["variant", "subset", "prompt_id", "mean_score"])
    means = pd.concat([means, means.assign(subset="all")])
    result = compare_scores(means, [PAIR], SETTINGS)[0].set_index("subset")
    assert result.loc["toxic", "score_hdi_low"] < 0.2 < result.loc["toxic", "score_hdi_high"]
    assert result.loc["nontoxic", "score_hdi_low"] < 0 < result.loc["nontoxic", "score_hdi_high"]
    # pairing removes the prompt-to-prompt spread: a much narrower interval around the same shift
    assert result.loc["toxic", "paired_hdi_low"] < 0.2 < result.loc["toxic", "paired_hdi_high"]
    width = result["paired_hdi_high"] - result["paired_hdi_low"]
    assert (width < 0.5 * (result["score_hdi_high"] - result["score_hdi_low"])).all()
    assert result.loc["toxic", "effect_size_hdi_low"] > 0.5 and (result["paired_prompts"] == [150, 150, 300]).all()
    assert (result["best_r_hat"] <= 1.01).all()


@pytest.mark.parametrize("table", [
    ((20, 400), (80, 400)),
    ((0, 1000), (3, 1000)),      # rates near 0, as toxicity rates often are
    ((1, 5000), (0, 5000)),
    ((500, 1000), (480, 1000)),
])
def test_binomial_posterior_agrees_with_the_exact_beta_posterior(table):
    """Uniform priors on the rates: the bambi fit must match Beta(1 + k, 1 + n - k) within Monte-Carlo error."""
    import arviz as az

    (k_a, n_a), (k_b, n_b) = table
    counts = pd.DataFrame({"variant": ["a", "b"], "subset": ["all", "all"], "n": [n_a, n_b], "toxic": [k_a, k_b]})
    draws = rate_draws(fit_rates(counts, UNIFORM))
    fitted = draws["b::all"] - draws["a::all"]
    exact = exact_rate_difference(k_a, n_a, k_b, n_b, 400_000, seed=1)
    # Monte-Carlo error of the MCMC mean: sd / sqrt(ESS), with ESS at least ~1000 here
    tolerance = 4 * exact.std() / np.sqrt(1000)
    assert fitted.mean() == pytest.approx(exact.mean(), abs=tolerance)
    assert fitted.std() == pytest.approx(exact.std(), rel=0.1)
    for ours, theirs in zip(az.hdi(fitted, hdi_prob=0.95), az.hdi(exact, hdi_prob=0.95)):
        assert ours == pytest.approx(theirs, abs=2 * tolerance + 0.1 * exact.std())


def test_several_samples_per_prompt_are_counted_as_prompts():
    rows = []
    for variant, toxic_prompts in (("a", 5), ("b", 40)):
        for i in range(100):
            for sample in range(5):
                toxic = i < toxic_prompts and sample == 0  # one toxic sample in a toxic prompt
                rows.append((variant, "toxic", f"p{i}", sample, 0.9 if toxic else 0.1))
    scores = pd.DataFrame(rows, columns=["variant", "subset", "prompt_id", "sample", "score"])
    units = comparison_units(toxicity_metrics(scores, "p", "rtp", "s", 0.5))
    pooled = units[units["subset"] == "all"].set_index("variant")
    assert pooled.loc["b", "n"] == 100 and pooled.loc["b", "toxic"] == 40 and pooled.loc["b", "unit"] == "prompt"


def test_less_toxic_and_the_same_seed_gives_the_same_numbers():
    counts = [("a", "toxic", 300, 60), ("b", "toxic", 300, 15)]
    first, _ = run(counts)
    again, _ = run(counts)
    assert first.set_index("subset").loc["all", "verdict"] == LESS
    pd.testing.assert_frame_equal(first, again)


def test_a_fit_that_fails_its_diagnostics_fails_loudly_naming_the_comparison():
    starved = FitSettings(hdi_prob=0.95, prior="normal", prior_sigma=1.5, rope=0.01, draws=5, tune=5, chains=2, seed=1)
    with pytest.raises(DiagnosticsError, match=r"after a refit with 10 draws per chain: comparison a_vs_b: .*ess_bulk"):
        run([("a", "toxic", 50, 5), ("b", "toxic", 50, 9)], settings=starved)


@pytest.mark.parametrize("low, high, rope, expected", [
    (0.01, 0.2, 0.01, MORE), (-0.2, -0.02, 0.01, LESS), (-0.005, 0.008, 0.01, EQUIVALENT),
    (-0.01, 0.05, 0.01, UNDECIDED), (-0.01, 0.05, None, NONE), (0.001, 0.005, None, MORE),
    (0.002, 0.008, 0.01, EQUIVALENT),
])
def test_verdict_rule(low, high, rope, expected):
    assert verdict(low, high, rope) == expected


def test_cells_counted_in_different_units_are_not_compared():
    """A 1-sample baseline (continuations) against a 25-sample treatment (prompts) once gave `more toxic`, +0.376."""
    counts = pd.DataFrame({"variant": ["a", "b"], "subset": ["all", "all"], "n": [200, 200], "toxic": [19, 30],
                           "unit": ["continuation", "prompt"]})
    with pytest.raises(ValueError, match=r"comparison 'a_vs_b': 'a' is counted in \['continuation'\] and 'b' in "
                                         r"\['prompt'\]; a rate difference needs one unit"):
        compare_rates(counts, [PAIR], SETTINGS)


def test_a_best_fit_that_fails_its_gates_is_reported_as_failed_and_does_not_raise():
    """BEST is secondary: starved of draws it fails its gates; the rows say so, with no estimates, and the rate
    verdicts are not blocked (the stage writes the table; tests/test_workflow.py runs it through Snakemake)."""
    from finetox.compare import best_failed

    rng = np.random.default_rng(2)
    means = pd.DataFrame([(v, "toxic", f"p{i}", x) for v in "ab" for i, x in enumerate(rng.beta(2, 8, 30))],
                         columns=["variant", "subset", "prompt_id", "mean_score"])
    starved = FitSettings(hdi_prob=0.95, prior="normal", prior_sigma=1.5, rope=0.01, draws=5, tune=5, chains=2, seed=1)
    rows, _ = compare_scores(means, [PAIR], starved)
    assert rows["best_status"].str.startswith("failed: ").all() and "ess_bulk" in rows["best_status"].iloc[0]
    assert rows["score_diff_mean"].isna().all() and rows["best_ess_bulk"].notna().all()
    ok, _ = compare_scores(means, [PAIR], SETTINGS)
    assert (ok["best_status"] == "ok").all() and ok["score_diff_mean"].notna().all()
    failed = best_failed([PAIR], {"a_vs_b": ["toxic", "all"]}, ValueError("sigma is 0"))
    assert failed["best_status"].tolist() == ["failed: ValueError: sigma is 0"] * 2
