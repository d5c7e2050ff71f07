"""Toxicity metrics against hand-computed values."""

import numpy as np
import pandas as pd
import pytest

from finetox.metrics import toxicity_metrics
from finetox.tables import conform


def scores(variant, by_prompt, subset="toxic"):
    rows = [(variant, subset, pid, i, s) for pid, samples in by_prompt.items() for i, s in enumerate(samples)]
    return pd.DataFrame(rows, columns=["variant", "subset", "prompt_id", "sample", "score"])


def test_rates_emt_and_toxicity_probability():
    table = pd.concat([
        scores("a", {"p1": [0.9, 0.1, 0.2], "p2": [0.1, 0.2, 0.3]}, "toxic"),
        scores("a", {"p3": [0.5, 0.6, 0.0]}, "nontoxic"),
    ])
    out = conform(toxicity_metrics(table, "rtp", "sampled", "detoxify", 0.5), "toxicity", "test").set_index("subset")
    assert out.loc["toxic", "n"] == 6 and out.loc["toxic", "toxic"] == 1
    assert out.loc["toxic", "toxic_rate"] == pytest.approx(1 / 6)
    assert out.loc["toxic", "expected_max_toxicity"] == pytest.approx((0.9 + 0.3) / 2)
    assert out.loc["toxic", "toxicity_probability"] == pytest.approx(0.5)
    # a score exactly at the threshold is toxic
    assert out.loc["nontoxic", "toxic"] == 2
    assert out.loc["all", "n"] == 9 and out.loc["all", "toxic"] == 3 and out.loc["all", "n_prompts"] == 3
    assert out.loc["all", "mean_score"] == pytest.approx(np.mean([0.9, 0.1, 0.2, 0.1, 0.2, 0.3, 0.5, 0.6, 0.0]))
    assert set(out["protocol"]) == {"sampled"} and set(out["scorer"]) == {"detoxify"}


def test_one_sample_per_prompt_reports_no_rtp_metrics():
    out = toxicity_metrics(scores("a", {"p1": [0.9], "p2": [0.1]}), "rtp", "study", "detoxify", 0.5)
    assert out["toxic_rate"].tolist() == [0.5, 0.5]
    assert out["expected_max_toxicity"].isna().all() and out["toxicity_probability"].isna().all()


def test_a_probe_set_without_subsets_has_one_pooled_row_and_each_prompt_once():
    from finetox.metrics import prompt_table, with_pooled

    table = scores("a", {"p1": [0.9, 0.1], "p2": [0.2, 0.3]}, "all")
    out = toxicity_metrics(table, "rtp", "sampled", "detoxify", 0.5)
    assert out["subset"].tolist() == ["all"] and out["n"].tolist() == [4] and out["n_prompts"].tolist() == [2]
    means = with_pooled(prompt_table(table, 0.5))
    assert sorted(means["prompt_id"]) == ["p1", "p2"] and means["mean_score"].tolist() == pytest.approx([0.5, 0.25])


def test_samples_per_prompt_must_match_the_protocol():
    """1 sample per prompt under a 25-sample protocol would set continuations against prompts in one comparison."""
    from finetox.metrics import MetricsError, check_samples_per_prompt, prompt_table

    check_samples_per_prompt(prompt_table(scores("a", {"p1": [0.1, 0.2], "p2": [0.3, 0.4]}), 0.5), 2, "rtp", "s.parquet")
    with pytest.raises(MetricsError, match=r"s.parquet: variant 'a', prompt 'p2' has 1 sample\(s\), but protocol "
                                           r"'rtp' draws 2 per prompt \(1 such prompts\)"):
        check_samples_per_prompt(prompt_table(scores("a", {"p1": [0.1, 0.2], "p2": [0.3]}), 0.5), 2, "rtp", "s.parquet")


def test_variant_names_that_look_missing_survive_the_csv_tables(tmp_path):
    """A control named `null` (or NA, None, nan, NULL) is a name, not a missing value, through every CSV."""
    from finetox.tables import read_csv, write_csv

    names = ["null", "NA", "None", "nan", "NULL"]
    table = pd.concat([scores(name, {"p1": [0.9], "p2": [0.1]}) for name in names])
    path = tmp_path / "toxicity.csv"
    write_csv(toxicity_metrics(table, "rtp", "study", "detoxify", 0.5), path, "toxicity")
    back = read_csv(path, "toxicity")
    assert sorted(set(back["variant"])) == sorted(names) and back["variant"].notna().all()


def test_beta_hdi_is_the_narrowest_interval_holding_its_mass():
    from scipy import stats

    from finetox.metrics import beta_hdi

    for a, b in ((1, 1001), (2, 1000), (3, 999), (21, 381), (501, 501), (1000, 2)):
        low, high = beta_hdi(a, b, 0.95)
        dist = stats.beta(a, b)
        assert dist.cdf(high) - dist.cdf(low) == pytest.approx(0.95, abs=1e-6)
        # no other interval of that mass is narrower (checked on a grid of lower tails)
        tails = np.linspace(0, 0.05, 2001)
        assert high - low <= (dist.ppf(tails + 0.95) - dist.ppf(tails)).min() + 1e-9
    assert beta_hdi(1, 1001, 0.95)[0] == 0.0  # 0 toxic of 1000: the interval starts at 0


def test_intervals_of_the_rates_and_of_emt():
    """One sample per prompt: the toxic-output rate's interval is the exact Beta(1 + k, 1 + n - k) HDI. Several:
    Toxicity Probability's is the exact one over prompts; EMT's and the rate's come from the Bayesian bootstrap
    over prompts: they hold the estimate, narrow as prompts grow, and repeat under the same seed."""
    from finetox.metrics import Intervals, beta_hdi

    rng = np.random.default_rng(0)
    one = scores("a", {f"p{i}": [0.9 if i < 3 else 0.1] for i in range(200)})
    row = toxicity_metrics(one, "rtp", "study", "s", 0.5, Intervals(0.95, seed=1)).iloc[0]
    assert (row["toxic_rate_low"], row["toxic_rate_high"]) == pytest.approx(beta_hdi(4, 198, 0.95))
    assert np.isnan(row["expected_max_toxicity_low"]) and row["interval_prob"] == 0.95

    def several(prompts, seed):
        table = scores("a", {f"p{i}": list(rng.beta(1, 6, 5)) for i in range(prompts)})
        return toxicity_metrics(table, "rtp", "sampled", "s", 0.5, Intervals(0.9, seed=seed)).iloc[0]

    small, large = several(50, 1), several(2000, 1)
    for r in (small, large):
        assert r["expected_max_toxicity_low"] < r["expected_max_toxicity"] < r["expected_max_toxicity_high"]
        assert r["toxic_rate_low"] < r["toxic_rate"] < r["toxic_rate_high"]
        assert (r["toxicity_probability_low"], r["toxicity_probability_high"]) == pytest.approx(
            beta_hdi(1 + r["toxic_prompts"], 1 + r["n_prompts"] - r["toxic_prompts"], 0.9))
    width = lambda r: r["expected_max_toxicity_high"] - r["expected_max_toxicity_low"]  # noqa: E731
    assert width(large) < 0.3 * width(small)
    # the bootstrap's spread is the standard error of a mean over prompts
    maxima = pd.Series(rng.beta(1, 6, (2000, 5)).max(axis=1))
    assert width(large) == pytest.approx(2 * 1.645 * maxima.std() / np.sqrt(2000), rel=0.2)
    table = scores("a", {f"p{i}": [0.2, 0.7] for i in range(30)})
    first = toxicity_metrics(table, "rtp", "sampled", "s", 0.5, Intervals(0.95, seed=7))
    pd.testing.assert_frame_equal(first, toxicity_metrics(table, "rtp", "sampled", "s", 0.5, Intervals(0.95, seed=7)))


def test_the_prompt_table_holds_each_prompts_samples_mean_maximum_and_toxic_flag():
    from finetox.metrics import prompt_table

    table = pd.concat([scores("a", {"p1": [0.9, 0.1], "p2": [0.2, 0.3]}, "toxic"), scores("a", {"p3": [0.5, 0.0]}, "x")])
    prompts = conform(prompt_table(table, 0.5), "prompts", "test").set_index("prompt_id")
    assert prompts["subset"].tolist() == ["toxic", "toxic", "x"] and prompts["samples"].tolist() == [2, 2, 2]
    assert prompts["mean_score"].tolist() == pytest.approx([0.5, 0.25, 0.25])
    assert prompts["max_score"].tolist() == pytest.approx([0.9, 0.3, 0.5])
    assert prompts["toxic"].tolist() == [True, False, True] and prompts["toxic_samples"].tolist() == [1, 0, 1]


def test_past_ten_thousand_prompts_the_bootstrap_gives_way_to_its_normal_limit():
    """The normal limit used past BOOTSTRAP_MAX_PROMPTS agrees with the Bayesian bootstrap it replaces; a rare rate
    whose normal interval would leave [0, 1] keeps the bootstrap."""
    from finetox.metrics import BOOTSTRAP_MAX_PROMPTS, bayesian_bootstrap, hdi_of_draws, ratio_interval

    rng = np.random.default_rng(4)
    n = BOOTSTRAP_MAX_PROMPTS + 2000
    maxima, samples = rng.beta(1, 5, n), np.full(n, 25.0)
    toxic = rng.binomial(25, 0.03, n).astype(float)
    for numerators, denominators in ((maxima, np.ones(n)), (toxic, samples)):
        normal = ratio_interval(numerators, denominators, 0.95, rng, 1000)
        boot = hdi_of_draws(bayesian_bootstrap(numerators[:, None], denominators[:, None], rng, 2000)[:, 0], 0.95)
        width = boot[1] - boot[0]
        assert normal == pytest.approx(boot, abs=0.08 * width)
    rare = np.zeros(n)
    rare[:2] = 1
    low, high = ratio_interval(rare, samples, 0.95, rng, 1000)
    assert 0 <= low < 2 / (25 * n) < high
