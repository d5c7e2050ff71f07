"""The verdicts: exact posteriors (checked against independent integrals and the exact Dirichlet), the paired design
primary, the same verdicts under every seed, ROPEs on three scales, borderline verdicts and three-state controls."""

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from finetox import decision, rates
from finetox.compare import FitSettings, compare_rates
from finetox.design import Comparison
from finetox.decision import EQUIVALENT, LESS, MORE, NONE, UNDECIDED, Rope
from finetox.metrics import with_pooled

PAIR = Comparison("a_vs_b", "instruct_vs_finetuned", "a", "b")


def settings(rope=Rope("absolute", 0.01), seed=1, **more):
    return FitSettings(hdi_prob=0.95, prior="uniform", rope=rope, draws=1000, tune=1000, chains=2, seed=seed, **more)


def prompt_rows(variant, flags, subset="s", ids=None, samples=1):
    ids = ids if ids is not None else [f"p{i}" for i in range(len(flags))]
    return pd.DataFrame({"variant": variant, "subset": subset, "prompt_id": ids, "samples": samples,
                         "toxic": np.asarray(flags, bool)})


def flags(k, n):
    return [True] * k + [False] * (n - k)


def unpaired_prompts(k_b, n_b, k_t, n_t):
    """Two variants on different prompts (external tables): only the unpaired analysis applies."""
    return with_pooled(pd.concat([prompt_rows("a", flags(k_b, n_b), ids=[f"a{i}" for i in range(n_b)]),
                                  prompt_rows("b", flags(k_t, n_t), ids=[f"b{i}" for i in range(n_t)])]))


def paired_prompts(table: rates.PairedTable):
    """Two variants on the same prompts with the given 2 x 2 table."""
    base = [True] * table.both + [True] * table.baseline_only + [False] * table.treatment_only + [False] * table.neither
    treat = [True] * table.both + [False] * table.baseline_only + [True] * table.treatment_only + [False] * table.neither
    return with_pooled(pd.concat([prompt_rows("a", base), prompt_rows("b", treat)]))


def one_row(prompts, s, subset="all"):
    return compare_rates(prompts, [PAIR], s).set_index("subset").loc[subset]


@pytest.mark.parametrize("k_b, n_b, k_t, n_t", [(100, 2000, 150, 2000), (0, 2000, 2, 2000), (30, 100, 32, 100)])
def test_the_unpaired_hdi_is_the_exact_one(k_b, n_b, k_t, n_t):
    """Checked by an independent integral: the HDI [l, h] of the difference of two Beta posteriors holds 95% of the
    mass, and the density is the same at both ends (what makes an interval the highest-density one)."""
    base, treat = stats.beta(1 + k_b, 1 + n_b - k_b), stats.beta(1 + k_t, 1 + n_t - k_t)
    summary = rates.summarise(rates.unpaired(k_b, n_b, k_t, n_t, "absolute"), 0.95)
    low, high = summary.hdi_low, summary.hdi_high
    edges = base.ppf([1e-12, 1 - 1e-12])

    def cdf(d):
        return integrate.quad(lambda x: base.pdf(x) * treat.cdf(x + d), *edges, limit=400, epsabs=1e-12)[0]

    def density(d):
        return integrate.quad(lambda x: base.pdf(x) * treat.pdf(x + d), *edges, limit=400, epsabs=1e-12)[0]

    assert cdf(high) - cdf(low) == pytest.approx(0.95, abs=2e-5)
    scale = np.sqrt(base.var() + treat.var())
    # equal densities at the limits, unless the density is monotone over the HDI (an end at the support's edge)
    assert density(low) * scale == pytest.approx(density(high) * scale, abs=2e-3)
    assert summary.error < 1e-3 * scale


def test_the_planted_borderline_case_is_decided_by_the_exact_limit_the_same_under_every_seed():
    """100 of 2,000 against 150 of 2,000 toxic (different prompts), ROPE +-1 pp: the exact HDI's lower limit is
    0.009966, a hair inside the ROPE: undecided, under every seed (NUTS' draws flipped it to `more toxic`)."""
    prompts = unpaired_prompts(100, 2000, 150, 2000)
    rows = [one_row(prompts, settings(seed=seed)) for seed in (1, 2, 3, 4, 5)]
    assert all(r.equals(rows[0]) for r in rows[1:])
    row = rows[0]
    assert row["design"] == "unpaired" and row["verdict"] == UNDECIDED and row["credible"]
    assert row["effect_hdi_low"] == pytest.approx(0.009966, abs=2e-6) and row["effect_hdi_high"] == pytest.approx(0.040024, abs=2e-6)
    assert not row["borderline"]  # 3.4e-5 from the edge, the computation's error far below that
    # a ROPE edge within the numerical error of the limit makes the verdict borderline
    tight = one_row(prompts, settings(rope=Rope("absolute", row["effect_hdi_low"] + row["numerical_error"] / 2)))
    assert tight["borderline"]


def test_paired_design_is_primary_and_uses_the_pairing():
    """The same prompts, treatment toxic on the baseline's 40 toxic prompts plus 12: unpaired, 40/400 against 52/400
    cannot tell; paired, 12 discordant one way and none the other decides it, and the finding says they disagree."""
    table = rates.PairedTable(both=40, baseline_only=0, treatment_only=12, neither=348)
    row = one_row(paired_prompts(table), settings(rope=None))
    assert row["design"] == "paired" and row["paired_n"] == 400 and row["discordant_treatment"] == 12
    assert row["verdict"] == MORE and row["unpaired_verdict"] == NONE and not row["designs_agree"]
    # the exact Dirichlet posterior: P(To) - P(Bo) has mean (12.5 - 0.5) / 402
    alpha = 0.5 + np.array([40, 0, 12, 348])
    draws = np.random.default_rng(0).dirichlet(alpha, 400_000)
    diff = draws[:, 2] - draws[:, 1]
    posterior = rates.paired(table, "absolute")
    assert posterior.cdf(np.quantile(diff, [0.025, 0.5, 0.975])) == pytest.approx([0.025, 0.5, 0.975], abs=2e-3)
    assert row["diff"] == pytest.approx(np.median(diff), abs=5e-4)


@pytest.mark.parametrize("scale", ["absolute", "ratio", "log-odds"])
def test_the_paired_posterior_is_the_exact_dirichlet_one_on_every_scale(scale):
    table = rates.PairedTable(both=12, baseline_only=5, treatment_only=14, neither=169)
    alpha = 0.5 + np.array([table.both, table.baseline_only, table.treatment_only, table.neither])
    joint = np.random.default_rng(1).dirichlet(alpha, 400_000)
    effect = decision.effect(joint[:, 0] + joint[:, 1], joint[:, 0] + joint[:, 2], scale)
    levels = [0.025, 0.25, 0.5, 0.75, 0.975]
    assert rates.paired(table, scale).cdf(np.quantile(effect, levels)) == pytest.approx(levels, abs=2.5e-3)


def test_the_paired_rate_ratio_does_not_depend_on_prompts_toxic_under_neither():
    few = rates.summarise(rates.paired(rates.PairedTable(3, 4, 11, 100), "ratio"), 0.95)
    many = rates.summarise(rates.paired(rates.PairedTable(3, 4, 11, 10_000), "ratio"), 0.95)
    assert (few.hdi_low, few.hdi_high) == pytest.approx((many.hdi_low, many.hdi_high), abs=1e-6)


def test_a_ratio_rope_sees_a_fivefold_rise_near_zero_that_an_absolute_one_calls_equivalent():
    """0.2% -> 1.0% of 20,000 prompts: within +-1 pp, yet five times as often toxic."""
    prompts = unpaired_prompts(40, 20_000, 200, 20_000)
    absolute = one_row(prompts, settings(rope=Rope("absolute", 0.01)))
    ratio = one_row(prompts, settings(rope=Rope("ratio", 1.25)))
    assert absolute["verdict"] == EQUIVALENT
    assert ratio["verdict"] == MORE and ratio["effect_name"] == "rate ratio"
    assert 3.5 < ratio["effect_hdi_low"] < ratio["effect"] < ratio["effect_hdi_high"] < 7.5
    assert (ratio["rope_low"], ratio["rope_high"]) == pytest.approx((0.8, 1.25))
    assert ratio["diff"] == pytest.approx(0.008, abs=3e-4)  # the same design's difference, beside it


def test_several_samples_per_prompt_count_prompts_and_units_must_agree():
    a = prompt_rows("a", flags(5, 50), samples=5)
    b = prompt_rows("b", flags(20, 50), samples=5)
    row = one_row(with_pooled(pd.concat([a, b])), settings())
    assert row["unit"] == "prompt" and row["n_baseline"] == 50 and row["toxic_treatment"] == 20
    assert "Toxicity Probability" in row["quantity"]
    with pytest.raises(ValueError, match="one unit"):
        compare_rates(with_pooled(pd.concat([a, prompt_rows("b", flags(20, 50), samples=1)])), [PAIR], settings())


def test_the_primary_subset_is_marked_and_must_exist():
    prompts = with_pooled(pd.concat([prompt_rows("a", flags(5, 50)), prompt_rows("b", flags(9, 50))]))
    rows = compare_rates(prompts, [PAIR], settings(primary_subset="s")).set_index("subset")
    assert rows.loc["s", "primary"] and not rows.loc["all", "primary"]
    with pytest.raises(ValueError, match="primary_subset"):
        compare_rates(prompts, [PAIR], settings(primary_subset="toxic"))


@pytest.mark.parametrize("low, high, rope, expected", [
    (0.011, 0.2, 0.01, MORE), (-0.2, -0.02, 0.01, LESS), (-0.005, 0.008, 0.01, EQUIVALENT),
    (-0.01, 0.05, 0.01, UNDECIDED), (0.01, 0.2, 0.01, UNDECIDED),  # touching the ROPE's edge is not outside it
    (-0.01, 0.05, None, NONE), (0.001, 0.005, None, MORE), (-0.3, -0.001, None, LESS),
])
def test_the_decision_rules(low, high, rope, expected):
    assert decision.verdict(low, high, Rope("absolute", rope) if rope else None) == expected


@pytest.mark.parametrize("expected, low, high, outcome", [
    # 8/80 against 8/80: HDI about [-9.4, +10.0] pp, ROPE +-5 pp: an underpowered null is inconclusive, not passed
    ("no difference", -0.094, 0.100, decision.INCONCLUSIVE),
    ("no difference", -0.03, 0.04, decision.HELD), ("no difference", 0.06, 0.2, decision.FAILED),
    ("not less", -0.04, 0.3, decision.HELD), ("not less", -0.2, 0.1, decision.INCONCLUSIVE),
    ("not less", -0.3, -0.06, decision.FAILED),
    ("not more", -0.3, 0.04, decision.HELD), ("not more", 0.06, 0.3, decision.FAILED),
    ("more", 0.06, 0.3, decision.HELD), ("more", -0.01, 0.3, decision.INCONCLUSIVE), ("more", -0.2, 0.04, decision.FAILED),
    ("less", -0.3, -0.06, decision.HELD), ("less", -0.04, 0.2, decision.FAILED),
])
def test_controls_have_three_outcomes(expected, low, high, outcome):
    assert decision.control_outcome(expected, low, high, Rope("absolute", 0.05)) == outcome


def test_a_null_control_without_a_rope_can_fail_but_never_hold():
    assert decision.control_outcome("no difference", -0.001, 0.001, None) == decision.INCONCLUSIVE
    assert decision.control_outcome("no difference", 0.01, 0.02, None) == decision.FAILED
    assert decision.combined_outcome([decision.HELD, decision.INCONCLUSIVE]) == decision.INCONCLUSIVE
    assert decision.combined_outcome([decision.HELD, decision.FAILED]) == decision.FAILED
    assert decision.combined_outcome([]) is None


def test_a_rope_on_the_ratio_scale_is_a_factor_above_one():
    with pytest.raises(ValueError, match="factor above 1"):
        Rope("ratio", 0.8)
    assert Rope("ratio", 1.25).describe() == "rate ratio between 0.8 and 1.25"
