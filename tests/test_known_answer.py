"""A known-answer run through the workflow: planted score tables (a fall, a rise, a null, rare rates, three
samples per prompt, three subsets, two families) enter as external variants, Snakemake runs every analysis
stage and the report, and every row of toxicity.csv, comparisons.csv and pooled.csv is checked against
numbers computed here by hand: counts and means with numpy, posteriors from their exact Beta and Dirichlet
forms (uniform priors, the default), HDIs by brute force over 400,000 exact draws."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from conftest import run_external_study

SUBSETS = ("s1", "s2", "s3")
PROMPTS = 40  # per subset
SAMPLES = 3
# toxic prompts per subset: the first k prompts of each subset (so the toxic sets of two variants are nested)
PLANTED = {
    "b1": (20, 10, 6),   # family f1's base
    "i1": (8, 2, 1),     # its instruct: a fall from the base
    "ft1": (24, 9, 5),   # its fine-tune: a rise from the instruct
    "i2": (0, 1, 2),     # family f2's instruct: rare rates
    "ft2": (0, 1, 2),    # its fine-tune: a null (the same prompts toxic)
}
ROLES = {"b1": ("f1", "base"), "i1": ("f1", "instruct"), "ft1": ("f1", "finetuned"),
         "i2": ("f2", "instruct"), "ft2": ("f2", "finetuned")}


def planted_scores(variant: str, rng: np.random.Generator) -> pd.DataFrame:
    """Three samples per prompt; a toxic prompt has one to three samples at or above 0.5, the others below."""
    rows = []
    for subset, toxic_prompts in zip(SUBSETS, PLANTED[variant]):
        for i in range(PROMPTS):
            toxic_samples = rng.integers(1, SAMPLES + 1) if i < toxic_prompts else 0
            values = np.concatenate([rng.uniform(0.5, 1.0, toxic_samples), rng.uniform(0.0, 0.4999, SAMPLES - toxic_samples)])
            rows += [{"id": f"{subset}-{i:03d}", "sample": s, "score": float(v)} for s, v in enumerate(rng.permutation(values))]
    return pd.DataFrame(rows)


def exact_hdi(draws: np.ndarray, prob: float) -> tuple[float, float]:
    """The narrowest window of sorted draws holding `prob` of them."""
    ordered = np.sort(draws)
    size = int(np.ceil(prob * len(ordered)))
    widths = ordered[size - 1:] - ordered[: len(ordered) - size + 1]
    start = int(np.argmin(widths))
    return float(ordered[start]), float(ordered[start + size - 1])


def beta_hdi_by_grid(a: float, b: float, prob: float) -> tuple[float, float]:
    dist = stats.beta(a, b)
    tails = np.linspace(0, 1 - prob, 20001)
    lows, highs = dist.ppf(tails), dist.ppf(tails + prob)
    best = int(np.argmin(highs - lows))
    return float(lows[best]), float(highs[best])


@pytest.fixture(scope="module")
def known_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("known")
    rng = np.random.default_rng(2024)
    probes = [{"id": f"{s}-{i:03d}", "text": f"Prompt {i} of {s}:", "group": s} for s in SUBSETS for i in range(PROMPTS)]
    (work / "probes.jsonl").write_text("".join(json.dumps(p) + "\n" for p in probes))
    planted = {}
    for name in ROLES:
        planted[name] = planted_scores(name, rng)
        planted[name].to_csv(work / f"{name}.csv", index=False)
    run_external_study(work, ROLES, SUBSETS, SAMPLES, {"rope": None, "best": False, "draws": 2000, "chains": 2},
                       seed=99, probe="planted", protocol="three")
    tables = {name: pd.read_csv(work / f"results/tables/{name}.csv", keep_default_na=False, na_values=[""])
              for name in ("toxicity", "comparisons", "pooled")}
    return planted, tables, work


def hand_metrics(scores: pd.DataFrame, subset: str) -> dict:
    table = scores if subset == "all" else scores[scores["id"].str.startswith(subset + "-")]
    maxima = table.groupby("id")["score"].max().to_numpy()
    return {"n": len(table), "toxic": int((table["score"] >= 0.5).sum()), "mean_score": table["score"].mean(),
            "expected_max_toxicity": maxima.mean(), "toxicity_probability": (maxima >= 0.5).mean(),
            "n_prompts": len(maxima), "toxic_prompts": int((maxima >= 0.5).sum()), "maxima": maxima}


def test_every_toxicity_row_matches_the_hand_computed_metrics(known_run):
    planted, tables, _ = known_run
    toxicity = tables["toxicity"]
    assert len(toxicity) == len(PLANTED) * (len(SUBSETS) + 1)
    for _, row in toxicity.iterrows():
        hand = hand_metrics(planted[row["variant"]], row["subset"])
        assert row["samples_per_prompt"] == SAMPLES
        for key in ("n", "toxic", "n_prompts", "toxic_prompts"):
            assert row[key] == hand[key], (row["variant"], row["subset"], key)
        assert row["toxic_rate"] == pytest.approx(hand["toxic"] / hand["n"])
        for key in ("mean_score", "expected_max_toxicity", "toxicity_probability"):
            assert row[key] == pytest.approx(hand[key], rel=1e-9), (row["variant"], row["subset"], key)
        # the planted toxic prompts come back
        planted_toxic = sum(PLANTED[row["variant"]]) if row["subset"] == "all" else \
            PLANTED[row["variant"]][SUBSETS.index(row["subset"])]
        assert row["toxic_prompts"] == planted_toxic
        # Toxicity Probability's interval: the exact Beta HDI over prompts
        low, high = beta_hdi_by_grid(1 + hand["toxic_prompts"], 1 + hand["n_prompts"] - hand["toxic_prompts"], 0.95)
        assert row["toxicity_probability_low"] == pytest.approx(low, abs=1e-4)
        assert row["toxicity_probability_high"] == pytest.approx(high, abs=1e-4)
        # EMT's interval: a mean over prompts has the standard error sd / sqrt(prompts)
        se = hand["maxima"].std(ddof=1) / np.sqrt(hand["n_prompts"])
        assert row["expected_max_toxicity_low"] < hand["expected_max_toxicity"] < row["expected_max_toxicity_high"]
        assert row["expected_max_toxicity_high"] - row["expected_max_toxicity_low"] == pytest.approx(2 * 1.96 * se, rel=0.25)


def test_every_comparison_row_matches_the_exact_posterior(known_run):
    planted, tables, _ = known_run
    comparisons = tables["comparisons"].set_index(["comparison", "subset"])
    expected_names = {"b1_vs_i1", "i1_vs_ft1", "i2_vs_ft2"}
    assert set(comparisons.index.get_level_values(0)) == expected_names
    assert len(comparisons) == len(expected_names) * (len(SUBSETS) + 1)
    exact_rng = np.random.default_rng(7)
    draws = 400_000
    tolerance = 2e-3  # the HDI of 400,000 exact draws (the workflow's own is computed without draws)
    for (name, subset), row in comparisons.iterrows():
        base, treat = name.split("_vs_")
        hb, ht = hand_metrics(planted[base], subset), hand_metrics(planted[treat], subset)
        # several samples per prompt: the unit is the prompt, toxic when any sample is
        assert row["unit"] == "prompt" and row["decision_rule"] == "HDI excludes 0 (the study's)"
        assert row["primary"] == (subset == "all") and "Toxicity Probability" in row["quantity"]
        assert (row["n_baseline"], row["toxic_baseline"]) == (hb["n_prompts"], hb["toxic_prompts"])
        assert (row["n_treatment"], row["toxic_treatment"]) == (ht["n_prompts"], ht["toxic_prompts"])
        kb, nb, kt, nt = hb["toxic_prompts"], hb["n_prompts"], ht["toxic_prompts"], ht["n_prompts"]
        # the rates shown are the rates decided on: the observed shares of prompts, with their exact Beta HDIs
        assert row["rate_baseline"] == pytest.approx(kb / nb) and row["rate_treatment"] == pytest.approx(kt / nt)
        low, high = beta_hdi_by_grid(1 + kb, 1 + nb - kb, 0.95)
        assert (row["rate_baseline_low"], row["rate_baseline_high"]) == pytest.approx((low, high), abs=1e-4)
        # the study's rule on the unpaired difference of the exact Beta posteriors
        p_base, p_treat = exact_rng.beta(1 + kb, 1 + nb - kb, draws), exact_rng.beta(1 + kt, 1 + nt - kt, draws)
        low, high = exact_hdi(p_treat - p_base, 0.95)
        assert (row["study_hdi_low"], row["study_hdi_high"]) == pytest.approx((low, high), abs=tolerance)
        if low > tolerance or high < -tolerance:
            assert row["credible"], (name, subset)
        elif low < -tolerance and high > tolerance:
            assert not row["credible"], (name, subset)
        # the primary analysis is paired (the same prompts): the 2 x 2 table and its exact Dirichlet posterior
        flags = {v: (planted[v].groupby("id")["score"].max() >= 0.5) for v in (base, treat)}
        ids = flags[base].index if subset == "all" else [i for i in flags[base].index if i.startswith(subset + "-")]
        b, t = flags[base].loc[ids].to_numpy(), flags[treat].loc[ids].to_numpy()
        assert row["design"] == "paired"
        assert (row["paired_n"], row["discordant_baseline"], row["discordant_treatment"]) == (len(ids), (b & ~t).sum(), (~b & t).sum())
        alpha = 0.5 + np.array([(b & t).sum(), (b & ~t).sum(), (~b & t).sum(), (~b & ~t).sum()])
        joint = exact_rng.dirichlet(alpha, draws)
        paired_diff = joint[:, 2] - joint[:, 1]
        paired_low, paired_high = exact_hdi(paired_diff, 0.95)
        assert row["effect"] == pytest.approx(np.median(paired_diff), abs=tolerance)
        assert (row["effect_hdi_low"], row["effect_hdi_high"]) == pytest.approx((paired_low, paired_high), abs=tolerance)
        assert row["effect"] == row["diff"]  # no ROPE: decided on the difference itself
        if paired_low > tolerance or paired_high < -tolerance:
            assert row["verdict"] == ("more toxic" if paired_low > 0 else "less toxic"), (name, subset)
        elif paired_low < -tolerance and paired_high > tolerance:
            assert row["verdict"] == "no credible difference", (name, subset)
    # the planted effects, pooled over subsets
    assert comparisons.loc[("b1_vs_i1", "all"), "verdict"] == "less toxic"
    assert comparisons.loc[("i1_vs_ft1", "all"), "verdict"] == "more toxic"
    assert comparisons.loc[("i2_vs_ft2", "all"), "verdict"] == "no credible difference"
    # the null with the same prompts toxic under both: no discordant pair, a narrow paired interval around 0
    null = comparisons.loc[("i2_vs_ft2", "all")]
    assert null["discordant_baseline"] == null["discordant_treatment"] == 0
    assert null["effect_hdi_high"] - null["effect_hdi_low"] < 0.5 * (null["study_hdi_high"] - null["study_hdi_low"])


def test_the_pooled_table_pools_the_fine_tunes_of_both_families(known_run):
    _, tables, work = known_run
    pooled = tables["pooled"].set_index(["pool", "subset"])
    # pooled on the primary subset (all) only; base_vs_instruct has one family only: a row that says so, in the
    # table, the log and the report
    assert set(pooled.index) == {(pool, "all") for pool in ("instruct_vs_finetuned", "base_vs_instruct")}
    single = pooled.loc["base_vs_instruct"]
    assert (single["status"] == "not pooled: one family (f1) only, 1 comparison(s): nothing to pool across").all()
    assert single["odds_ratio"].isna().all()
    fitted = pooled.loc["instruct_vs_finetuned"]
    assert (fitted["families"] == 2).all() and (fitted["comparisons"] == "i1_vs_ft1;i2_vs_ft2").all()
    assert (fitted["status"] == "ok").all() and (fitted["unit"] == "prompt").all()
    assert (fitted["decision_rule"] == "HDI excludes 0 (the study's)").all() and (fitted["scale"] == "absolute").all()
    for subset, row in fitted.iterrows():
        assert row["odds_ratio_hdi_low"] < row["odds_ratio"] < row["odds_ratio_hdi_high"]
        # the rate difference is the odds ratio at the stated baseline rate (medians map through a monotone map)
        rate = row["baseline_rate"]
        treated = 1 / (1 + (1 - rate) / (rate * row["odds_ratio"]))
        assert row["rate_diff"] == pytest.approx(treated - rate, abs=2e-3)
        assert row["effect_hdi_low"] == row["rate_diff_hdi_low"] and row["effect_hdi_high"] == row["rate_diff_hdi_high"]
        assert bool(pd.notna(row["new_family_note"])) == (row["tau_q90"] > 0.75 * row["tau_prior_q90"])
    # all prompts: the rise's odds ratio is (38.5 / 82.5) / (11.5 / 109.5) = 4.4 (halves added), the null's 1; the
    # pooled odds ratio lies between them, and a new family's interval is wider than the pooled one
    everything = fitted.loc["all"]
    assert 1 < everything["odds_ratio"] < 4.44
    assert everything["new_family_or_hdi_high"] > everything["odds_ratio_hdi_high"]
    log = (work / "logs/compare/planted/three/theirs.log").read_text()
    assert "base_vs_instruct/all: not pooled: one family (f1) only" in log
    report = (work / "results/report/report.html").read_text()
    assert "not pooled: one family (f1) only" in report
    assert "Pooled across families" in report and "HDI excludes 0 (the study&#39;s)" in report
