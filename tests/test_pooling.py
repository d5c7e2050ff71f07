"""The pooled estimate across families (finetox.pooling): the hierarchical binomial model (a real bambi fit) against
a grid integration of the same model, pools and the reasons a pool is not fitted, failures that are reported and
failures that fail the job, and the recipes' `pool_as`."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.special import expit, logsumexp

from finetox import pooling
from finetox.compare import FitSettings
from finetox.decision import Rope
from finetox.pooling import Member, pooled_estimates
from finetox.sampling import posterior_draws

SETTINGS = FitSettings(hdi_prob=0.95, prior="uniform", rope=Rope("log-odds", 0.2), draws=2000, tune=1000, chains=2,
                       seed=11)


def rows_of(counts, unit="continuation", subset="all"):
    """Comparison rows as finetox.compare writes them: (comparison, baseline, treatment, k_b, n_b, k_t, n_t)."""
    return pd.DataFrame([{"comparison": c, "subset": subset, "baseline": b, "treatment": t, "toxic_baseline": kb,
                          "n_baseline": nb, "toxic_treatment": kt, "n_treatment": nt, "unit": unit}
                         for c, b, t, kb, nb, kt, nt in counts])


def grid_posterior(counts):
    """The pooled model's posterior by quadrature, for comparisons with a baseline each: per comparison, the
    likelihood of theta with the baseline's intercept integrated out on a grid under its Logistic(0, 1) prior; then
    the (mu, tau) grid, theta integrated against Normal(mu, tau) (on the theta grid, or by Gauss-Hermite nodes where
    tau is smaller than the theta grid resolves). Returns the mu grid, the tau grid and the joint density."""
    intercept = np.arange(-8, 1, 0.005)
    theta = np.arange(-2.5, 3.5, 0.01)
    log_prior = stats.logistic.logpdf(intercept)
    likelihoods = []
    for _, _, _, kb, nb, kt, nt in counts:
        base = stats.binom.logpmf(kb, nb, expit(intercept))[:, None]
        treated = stats.binom.logpmf(kt, nt, expit(intercept[:, None] + theta[None, :]))
        likelihood = logsumexp(log_prior[:, None] + base + treated, axis=0)
        likelihoods.append(np.exp(likelihood - likelihood.max()))
    mu = np.arange(-1.5, 2.5, 0.01)
    tau = np.arange(0.005, 3.5, 0.01)  # HalfNormal(1) leaves 0.05% of its mass above 3.5
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    weights = weights / weights.sum()
    log_density = stats.norm.logpdf(mu, 0, pooling.MU_PRIOR_SD)[:, None] + \
        stats.halfnorm.logpdf(tau, scale=pooling.TAU_PRIOR_SD)[None, :]
    offsets = theta[None, :] - mu[:, None]
    for likelihood in likelihoods:
        support = likelihood > 1e-12  # (the theta grid's end is far below this for every comparison)
        marginal = np.empty((len(mu), len(tau)))
        for i, t in enumerate(tau):
            if t < 0.1:  # narrower than the theta grid resolves well: Gauss-Hermite on an interpolated likelihood
                points = mu[:, None] + t * nodes[None, :]
                marginal[:, i] = np.interp(points, theta, likelihood, left=0, right=0) @ weights
            else:
                kernel = np.exp(-0.5 * (offsets[:, support] / t) ** 2) * (0.01 / (t * np.sqrt(2 * np.pi)))
                marginal[:, i] = kernel @ likelihood[support]
        log_density = log_density + np.log(np.maximum(marginal, 1e-300))
    density = np.exp(log_density - log_density.max())
    return mu, tau, density / density.sum()


def grid_hdi(values, mass, density, prob):
    """The HDI of a variable on a grid: the points of highest density holding `prob` of the mass."""
    order = np.argsort(density)[::-1]
    inside = values[order[: np.searchsorted(np.cumsum(mass[order]), prob) + 1]]
    return float(inside.min()), float(inside.max())


def grid_quantile(values, mass, q):
    return float(values[np.searchsorted(np.cumsum(mass), q)])


#: three families, 600 prompts per variant: log odds ratios about +0.95, +0.36 and +0.64
KNOWN = [("c1", "i1", "t1", 12, 600, 30, 600), ("c2", "i2", "t2", 30, 600, 42, 600), ("c3", "i3", "t3", 45, 600, 80, 600)]


def test_the_pooled_odds_ratio_matches_a_grid_posterior_of_the_same_model():
    """Three families' comparisons on raw counts: the bambi fit's pooled odds ratio (median, HDI), tau and the rate
    difference at the stated baseline rate agree with the same model integrated on a grid, within a few times the
    Monte Carlo error the row reports; the verdict on a rate-difference ROPE is decided on that difference."""
    members = {c: Member("instruct_vs_finetuned (dolly)", "instruct_vs_finetuned", f"f{j}")
               for j, (c, *_) in enumerate(KNOWN)}
    out, idata = pooled_estimates(rows_of(KNOWN), members, SETTINGS)
    row = out.iloc[0]
    assert row["status"] == "ok" and (row["families"], row["n_comparisons"]) == (3, 3)
    assert row["r_hat"] <= 1.01 and row["ess_bulk"] >= 400 and row["divergences"] == 0
    mu, tau, density = grid_posterior(KNOWN)
    mu_mass, tau_mass = density.sum(axis=1), density.sum(axis=0)
    low, high = grid_hdi(mu, mu_mass, mu_mass, 0.95)
    error = row["hdi_mc_error"]  # on the log-odds scale: the ROPE's
    assert 0 < error < 0.1
    assert np.log(row["odds_ratio"]) == pytest.approx(grid_quantile(mu, mu_mass, 0.5), abs=0.03)
    assert np.log(row["odds_ratio_hdi_low"]) == pytest.approx(low, abs=4 * error + 0.01)
    assert np.log(row["odds_ratio_hdi_high"]) == pytest.approx(high, abs=4 * error + 0.01)
    assert row["scale"] == "log-odds" and row["effect_hdi_low"] == pytest.approx(row["odds_ratio_hdi_low"])
    assert row["tau_median"] == pytest.approx(grid_quantile(tau, tau_mass, 0.5), abs=0.05)
    assert row["tau_q90"] == pytest.approx(grid_quantile(tau, tau_mass, 0.9), abs=0.1)
    assert row["tau_prior_q90"] == pytest.approx(1.645, abs=1e-3)
    assert bool(row["new_family_note"]) == (row["tau_q90"] > pooling.MOSTLY_PRIOR * row["tau_prior_q90"])
    # the pooled baseline rate and the rate difference there: the grid's mu pushed through the same map
    rate = (12 + 30 + 45 + 1) / (1800 + 2)
    assert row["baseline_rate"] == pytest.approx(rate)
    diff = expit(np.log(rate / (1 - rate)) + mu) - rate
    diff_low, diff_high = grid_hdi(diff, mu_mass, mu_mass / np.gradient(diff), 0.95)
    assert row["rate_diff_hdi_low"] == pytest.approx(diff_low, abs=0.003)
    assert row["rate_diff_hdi_high"] == pytest.approx(diff_high, abs=0.003)
    # a new family's interval is wider than the pooled one
    assert row["new_family_or_hdi_low"] < row["odds_ratio_hdi_low"] < row["odds_ratio_hdi_high"] < row["new_family_or_hdi_high"]
    # on a ROPE of +-1 percentage point the same draws are decided on the rate difference at the baseline rate
    name = "instruct_vs_finetuned (dolly)/all"
    draws = {key: posterior_draws(idata, key, pool=name) for key in ("mu", "tau")}
    absolute = FitSettings(**{**vars(SETTINGS), "rope": Rope("absolute", 0.01)})
    pool = pooling.pools_of(rows_of(KNOWN), members)[0]
    decided = pooling.summarise_pool(pool, pooling.pool_counts(pool, rows_of(KNOWN)), draws["mu"], draws["tau"], absolute)
    assert decided["scale"] == "absolute"
    assert decided["effect_hdi_low"] == pytest.approx(row["rate_diff_hdi_low"])
    assert decided["effect_hdi_high"] == pytest.approx(row["rate_diff_hdi_high"])
    low_edge = -0.01
    expected = "more toxic" if decided["effect_hdi_low"] > 0.01 else "undecided"
    assert decided["verdict"] == expected and decided["effect_hdi_low"] > low_edge
    assert decided["borderline"] == (min(abs(limit - edge) for limit in (decided["effect_hdi_low"],
                                                                         decided["effect_hdi_high"])
                                         for edge in (-0.01, 0.01)) <= 2 * decided["hdi_mc_error"])


def test_every_pool_is_a_row_and_only_fit_errors_become_failed_rows():
    """No fit runs here: a pool of one family, a pool counting different units and a pool with no toxic unit at all
    are rows whose status says why (the last a DegenerateDataError); comparisons sharing a baseline enter its counts
    once; a malformed frame (a column missing) raises instead of becoming a failed row."""
    from finetox.tables import conform

    counts = [("a1", "ia", "ta1", 5, 100, 9, 100), ("a2", "ia", "ta2", 5, 100, 12, 100),  # one family, two
              ("b1", "ib", "tb1", 0, 100, 0, 100), ("c1", "ic", "tc1", 0, 100, 0, 100)]   # nothing toxic
    members = {"a1": Member("instruct_vs_community", "instruct_vs_community", "fa"),
               "a2": Member("instruct_vs_community", "instruct_vs_community", "fa"),
               "b1": Member("base_vs_instruct", "base_vs_instruct", "fb"),
               "c1": Member("base_vs_instruct", "base_vs_instruct", "fc")}
    rows = pd.concat([rows_of(counts), rows_of([("m1", "im", "tm", 3, 50, 4, 50)], unit="prompt"),
                      rows_of([("m2", "in", "tn", 3, 50, 4, 50)])], ignore_index=True)
    members |= {"m1": Member("instruct_vs_aligned (dpo)", "instruct_vs_aligned", "fm"),
                "m2": Member("instruct_vs_aligned (dpo)", "instruct_vs_aligned", "fn")}
    out, idata = pooled_estimates(rows, members, SETTINGS)
    status = out.set_index("pool")["status"]
    assert idata is None and len(out) == 3
    assert status["instruct_vs_community"] == ("not pooled: one family (fa) only, 2 comparison(s): nothing to "
                                               "pool across")
    assert status["instruct_vs_aligned (dpo)"] == "not pooled: its comparisons count different units (continuation, prompt)"
    assert status["base_vs_instruct"] == ("failed: DegenerateDataError: no toxic unit in any of its cells: the odds "
                                          "ratio is not identified")
    assert out["odds_ratio"].isna().all()
    labels = {"probe": "p", "protocol": "q", "scorer": "s", "measure": "toxicity"}
    assert list(conform(out.assign(**labels), "pooled", "test").columns[:4]) == ["probe", "protocol", "scorer", "measure"]
    # two comparisons of one family share its instruct model: its counts enter the model once
    community = next(p for p in pooling.pools_of(rows, members) if p.label == "instruct_vs_community")
    data = pooling.model_data(pooling.pool_counts(community, rows))
    assert data[["baseline", "treated", "toxic", "n"]].values.tolist() == [
        ["ia", 0.0, 5, 100], ["ia", 1.0, 9, 100], ["ia", 1.0, 12, 100]]
    with pytest.raises(ValueError, match=r"lack column\(s\) \['n_treatment'\]"):
        pooled_estimates(rows.drop(columns="n_treatment"), members, SETTINGS)


def test_pool_as_pools_a_recipe_across_its_variants_and_retrains_nothing():
    """study.yaml with repairs.yaml: Phi-3's fused-module Dolly recipe joins the Dolly pool (not a pool of its own),
    Llama-3.1's two community fine-tunes are one pool with the other families' (not a pool dropped), and `pool_as`
    is not part of what a fine-tune's rerun digest holds."""
    import copy

    import yaml
    from snakemake.utils import update_config

    from conftest import REPO
    from finetox.config import load
    from finetox.stages import _pool_members

    raw = yaml.safe_load((REPO / "config/study.yaml").read_text())
    update_config(raw, yaml.safe_load((REPO / "config/repairs.yaml").read_text()))
    study = load(copy.deepcopy(raw))
    members = _pool_members(study, list(study.comparisons.values()))
    pools = {}
    for name, member in members.items():
        pools.setdefault(member.pool, set()).add(member.family)
    assert pools["instruct_vs_finetuned (dolly)"] >= {"phi3-mini", "phi35-mini", "llama2-7b", "gemma-2b"}
    assert pools["finetuned_vs_aligned (safety-dpo)"] >= {"phi3-mini", "llama2-7b"}
    community = [n for n, m in members.items() if m.pool == "instruct_vs_community"]
    assert sorted(members[n].family for n in community).count("llama31-8b") == 2 and len(community) == 4
    without = copy.deepcopy(raw)
    for recipe in without["recipes"].values():
        recipe.pop("pool_as", None)
    plain = load(without)
    for variant in ("phi3-mini-dolly", "llama2-7b-chat-dolly", "gemma2-2b-it-dolly-dpo"):
        assert plain.training_hash(variant) == study.training_hash(variant)
