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
    assert rows.loc["toxic", "credible"] and (rows["decision_rule"] == "HDI+ROPE (Kruschke)").all()
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
    # (within a subset: the pooled `all` mixes the +0.2 and 0 shifts, so its paired differences are bimodal)
    width = (result["paired_hdi_high"] - result["paired_hdi_low"]).loc[["toxic", "nontoxic"]]
    assert (width < 0.5 * (result["score_hdi_high"] - result["score_hdi_low"]).loc[["toxic", "nontoxic"]]).all()
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


@pytest.mark.parametrize("low, high, rope, expected, is_credible", [
    # Kruschke's HDI+ROPE: outside the ROPE rejects the null, inside accepts it, across an edge is undecided
    (0.011, 0.2, 0.01, MORE, True), (-0.2, -0.02, 0.01, LESS, True), (-0.005, 0.008, 0.01, EQUIVALENT, False),
    (-0.01, 0.05, 0.01, UNDECIDED, False),
    (0.002, 0.009, 0.01, EQUIVALENT, True),  # credible under the study's rule, yet practically equivalent
    (0.005, 0.015, 0.01, UNDECIDED, True),   # credible, but reaching into the ROPE
    (0.01, 0.2, 0.01, UNDECIDED, True),      # touching the ROPE's edge is not outside it
    # the study's rule (no ROPE): the HDI excludes 0
    (-0.01, 0.05, None, NONE, False), (0.001, 0.005, None, MORE, True), (-0.3, -0.001, None, LESS, True),
])
def test_the_two_decision_rules(low, high, rope, expected, is_credible):
    from finetox.compare import credible

    assert verdict(low, high, rope) == expected
    assert credible(low, high) is is_credible


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


@pytest.mark.parametrize("k", [0, 1, 2])
def test_the_default_prior_is_honest_at_rates_near_zero(k):
    """The default prior (uniform on the rate) against the exact posterior Beta(1 + k, 1 + n - k) of one cell
    with k = 0, 1, 2 toxic of n = 1000: mean and HDI. Normal(0, 1.5) on the log-odds would give 0.27% at k = 0."""
    import arviz as az

    from finetox.metrics import beta_hdi

    default = {key: value for key, value in UNIFORM.__dict__.items() if key != "prior"}
    settings = FitSettings(prior=config_default("prior"), **default)
    assert settings.prior == "uniform"
    n = 1000
    counts = pd.DataFrame({"variant": ["a", "b"], "subset": ["all"] * 2, "n": [n] * 2, "toxic": [k, 5]})
    draws = rate_draws(fit_rates(counts, settings))["a::all"]
    exact_mean, exact_sd = (1 + k) / (n + 2), np.sqrt((1 + k) * (1 + n - k) / ((n + 2) ** 2 * (n + 3)))
    assert draws.mean() == pytest.approx(exact_mean, abs=4 * exact_sd / np.sqrt(1000))
    low, high = az.hdi(draws, hdi_prob=0.95)
    exact_low, exact_high = beta_hdi(1 + k, 1 + n - k, 0.95)
    assert low == pytest.approx(exact_low, abs=0.25 * exact_sd) and high == pytest.approx(exact_high, abs=0.5 * exact_sd)


def config_default(key):
    import yaml

    from conftest import REPO

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    return schema["properties"]["comparisons"]["properties"][key]["default"]


def paired_prompts(base_toxic, treat_toxic):
    rows = [("a", "toxic", f"p{i}", bool(t)) for i, t in enumerate(base_toxic)]
    rows += [("b", "toxic", f"p{i}", bool(t)) for i, t in enumerate(treat_toxic)]
    prompts = pd.DataFrame(rows, columns=["variant", "subset", "prompt_id", "toxic"])
    return pd.concat([prompts, prompts.assign(subset="all")], ignore_index=True)


def paired_run(base_toxic, treat_toxic):
    counts = pd.DataFrame({"variant": ["a", "a", "b", "b"], "subset": ["toxic", "all"] * 2,
                           "n": [len(base_toxic)] * 4, "toxic": [sum(base_toxic)] * 2 + [sum(treat_toxic)] * 2,
                           "unit": "continuation"})
    rows, _ = compare_rates(counts, [PAIR], UNIFORM, paired_prompts(base_toxic, treat_toxic))
    return rows.set_index("subset").loc["all"]


def test_the_paired_analysis_uses_the_pairing_and_matches_its_exact_posterior():
    """Planted paired data: 400 prompts, the baseline toxic on 100, the treatment on the same 100 and 20 more.
    Unpaired, +5 points with 100 vs 120 of 400 is not credible; paired, the 20 discordant prompts all point one
    way and the interval is several times narrower. With the same rates drawn independently per prompt the
    pairing carries no information and the two intervals are about as wide."""
    base = [i < 100 for i in range(400)]
    row = paired_run(base, [i < 120 for i in range(400)])
    assert (row["paired_n"], row["discordant_baseline"], row["discordant_treatment"]) == (400, 0, 20)
    assert not row["credible"] and row["paired_rate_credible"]
    assert row["paired_rate_diff_mean"] == pytest.approx((20 + 0.5 - 0.5) / 402, abs=5e-4)  # the exact Dirichlet mean
    paired_width = row["paired_rate_hdi_high"] - row["paired_rate_hdi_low"]
    assert paired_width < 0.5 * (row["hdi_high"] - row["hdi_low"])
    assert row["paired_rate_hdi_low"] < 0.05 < row["paired_rate_hdi_high"]

    rng = np.random.default_rng(11)
    independent = paired_run(list(rng.permutation(base)), list(rng.permutation([i < 120 for i in range(400)])))
    ratio = ((independent["paired_rate_hdi_high"] - independent["paired_rate_hdi_low"])
             / (independent["hdi_high"] - independent["hdi_low"]))
    assert 0.85 < ratio < 1.15


def test_paired_draws_are_the_exact_dirichlet_posterior():
    from finetox.compare import paired_rate_difference

    table = {"both": 30, "baseline_only": 4, "treatment_only": 17, "neither": 349}
    draws = paired_rate_difference(table, 200_000, np.random.default_rng(0))
    alpha = 0.5 + np.array([30, 4, 17, 349])
    total = alpha.sum()
    mean = (alpha[2] - alpha[1]) / total
    # Var(X2 - X1) for a Dirichlet: (a2(T - a2) + a1(T - a1) + 2 a1 a2) / (T^2 (T + 1))
    var = (alpha[2] * (total - alpha[2]) + alpha[1] * (total - alpha[1]) + 2 * alpha[1] * alpha[2]) / (total**2 * (total + 1))
    assert draws.mean() == pytest.approx(mean, abs=4 * np.sqrt(var / 200_000))
    assert draws.var() == pytest.approx(var, rel=0.02)


def grid_posterior_of_mu(d, s, mu_sd, tau_sd, prob):
    """The pooled model's posterior of mu by brute force on a grid (theta integrated out analytically)."""
    from scipy import stats

    mu = np.linspace(-0.6, 0.6, 2401)[:, None]
    tau = np.linspace(1e-5, 0.6, 1500)[None, :]
    log_post = stats.norm.logpdf(mu, 0, mu_sd) + stats.halfnorm.logpdf(tau, scale=tau_sd)
    for d_j, s_j in zip(d, s):
        log_post = log_post + stats.norm.logpdf(d_j, mu, np.sqrt(tau**2 + s_j**2))
    density = np.exp(log_post - log_post.max()).sum(axis=1)
    density /= density.sum()
    grid = mu[:, 0]
    order = np.argsort(density)[::-1]
    inside = grid[order[: np.searchsorted(np.cumsum(density[order]), prob) + 1]]
    return float((grid * density).sum()), float(inside.min()), float(inside.max())


def test_the_pooled_estimate_across_families_matches_its_exact_posterior():
    """Four families' differences (+5, +8, +6, +7 points, sd 1 point each) pooled by the random-effects model: the
    PyMC fit against a grid integration of the same model. (With three families at +5, +8, +3 the same model's
    HDI is [-1.6, +12.2] points: the spread between so few families is barely known, and the pooled mean is not
    credible; the grid says so too.)"""
    from finetox.compare import POOLED_MU_SD, POOLED_TAU_SD, Pool, pooled_differences

    planted = [0.05, 0.08, 0.06, 0.07]
    rows = pd.DataFrame({"comparison": ["f1", "f2", "f3", "f4"], "subset": "all", "diff_mean": planted,
                         "diff_sd": [0.01] * 4})
    pools = [Pool("instruct_vs_finetuned (dolly)|all", "instruct_vs_finetuned", "all", ("f1", "f2", "f3", "f4"))]
    settings = FitSettings(hdi_prob=0.95, prior="uniform", prior_sigma=1.5, rope=None, draws=2000, tune=1000,
                           chains=2, seed=5)
    out = pooled_differences(rows, pools, settings).iloc[0]
    mean, low, high = grid_posterior_of_mu(planted, [0.01] * 4, POOLED_MU_SD, POOLED_TAU_SD, 0.95)
    assert out["status"] == "ok" and out["families"] == 4 and out["pool"] == "instruct_vs_finetuned (dolly)"
    assert out["pooled_mean"] == pytest.approx(mean, abs=0.003)
    assert out["pooled_hdi_low"] == pytest.approx(low, abs=0.006) and out["pooled_hdi_high"] == pytest.approx(high, abs=0.006)
    assert out["credible"] and out["verdict"] == MORE and out["tau_mean"] > 0
    assert out["new_family_hdi_low"] < out["pooled_hdi_low"] and out["new_family_hdi_high"] > out["pooled_hdi_high"]


def test_pools_need_two_families_and_one_comparison_per_family():
    from finetox.compare import pools_of

    rows = pd.DataFrame({"comparison": ["a1", "b1", "b2", "c1"], "subset": "all"})
    groups = {"a1": ("k (dolly)", "k", "A"), "b1": ("k (dolly)", "k", "B"), "b2": ("k (alpaca)", "k", "B"),
              "c1": ("k (alpaca)", "k", "B")}
    pools, skipped = pools_of(rows, groups)
    assert [p.comparisons for p in pools] == [("a1", "b1")]
    assert skipped == ["k (alpaca)/all: one family (B) only"]
    # a pooled fit that cannot run gives rows with its error, in the table's schema, and no estimates
    from finetox.compare import pooled_failed
    from finetox.tables import conform

    failed = conform(pooled_failed(pools, ValueError("no draws")).assign(probe="p", protocol="q", scorer="s", measure="toxicity"),
                     "pooled", "test")
    assert failed["status"].tolist() == ["failed: ValueError: no draws"] and failed["pooled_mean"].isna().all()


def test_best_is_bounded_by_a_seeded_sample_of_shared_prompts():
    """Past best_max_prompts, BEST sees a seeded sample of the shared prompts, the same for both variants (so
    the paired differences stay paired); below it, every prompt."""
    from finetox.compare import _two_sample_groups

    rng = np.random.default_rng(0)
    means = pd.DataFrame([(v, "toxic", f"p{i:04d}", x) for v in "ab" for i, x in enumerate(rng.beta(2, 8, 500))],
                         columns=["variant", "subset", "prompt_id", "mean_score"])
    capped = FitSettings(**{**SETTINGS.__dict__, "best_max_prompts": 120})
    groups, used = _two_sample_groups(means, [PAIR], {"a_vs_b": ["toxic"]}, capped)
    sizes = {role: len(values) for _, _, role, values in groups}
    assert used == {("a_vs_b", "toxic"): 120} and sizes == {"baseline": 120, "treatment": 120, "paired": 120}
    base, treat, paired = (values for *_, values in groups)
    np.testing.assert_array_equal(paired, treat - base)
    again, _ = _two_sample_groups(means, [PAIR], {"a_vs_b": ["toxic"]}, capped)
    np.testing.assert_array_equal(again[0][3], base)
    other_seed, _ = _two_sample_groups(means, [PAIR], {"a_vs_b": ["toxic"]}, FitSettings(**{**capped.__dict__, "seed": 9}))
    assert not np.array_equal(other_seed[0][3], base)
    _, everything = _two_sample_groups(means, [PAIR], {"a_vs_b": ["toxic"]}, SETTINGS)
    assert everything == {("a_vs_b", "toxic"): 500}
