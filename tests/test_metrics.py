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
    from finetox.metrics import prompt_means

    table = scores("a", {"p1": [0.9, 0.1], "p2": [0.2, 0.3]}, "all")
    out = toxicity_metrics(table, "rtp", "sampled", "detoxify", 0.5)
    assert out["subset"].tolist() == ["all"] and out["n"].tolist() == [4] and out["n_prompts"].tolist() == [2]
    means = prompt_means(table)
    assert sorted(means["prompt_id"]) == ["p1", "p2"] and means["mean_score"].tolist() == pytest.approx([0.5, 0.25])


def test_samples_per_prompt_must_match_the_protocol():
    """1 sample per prompt under a 25-sample protocol would set continuations against prompts in one comparison."""
    from finetox.metrics import MetricsError, check_samples_per_prompt

    check_samples_per_prompt(scores("a", {"p1": [0.1, 0.2], "p2": [0.3, 0.4]}), 2, "rtp", "s.parquet")
    with pytest.raises(MetricsError, match=r"s.parquet: variant 'a', prompt 'p2' has 1 sample\(s\), but protocol "
                                           r"'rtp' draws 2 per prompt \(1 such prompts\)"):
        check_samples_per_prompt(scores("a", {"p1": [0.1, 0.2], "p2": [0.3]}), 2, "rtp", "s.parquet")


def test_variant_names_that_look_missing_survive_the_csv_tables(tmp_path):
    """A control named `null` (or NA, None, nan, NULL) is a name, not a missing value, through every CSV."""
    from finetox.tables import read_csv, write_csv

    names = ["null", "NA", "None", "nan", "NULL"]
    table = pd.concat([scores(name, {"p1": [0.9], "p2": [0.1]}) for name in names])
    path = tmp_path / "toxicity.csv"
    write_csv(toxicity_metrics(table, "rtp", "study", "detoxify", 0.5), path, "toxicity")
    back = read_csv(path, "toxicity")
    assert sorted(set(back["variant"])) == sorted(names) and back["variant"].notna().all()
