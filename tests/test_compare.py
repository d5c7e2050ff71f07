"""BEST beside the verdicts (finetox.best, real PyMC fits): Student-t locations, pairing, gates, failures that are
reported and failures that fail the job. The pooled estimate is tested in test_pooling.py."""

import numpy as np
import pandas as pd
import pytest

from finetox.best import compare_scores
from finetox.compare import FitSettings
from finetox.design import Comparison
from finetox.decision import Rope

SETTINGS = FitSettings(hdi_prob=0.95, prior="uniform", rope=Rope("absolute", 0.01), draws=1000, tune=1000, chains=2,
                       seed=3)
PAIR = Comparison("a_vs_b", "instruct_vs_finetuned", "a", "b")


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
    assert result.loc["toxic", "location_diff_hdi_low"] < 0.2 < result.loc["toxic", "location_diff_hdi_high"]
    assert result.loc["nontoxic", "location_diff_hdi_low"] < 0 < result.loc["nontoxic", "location_diff_hdi_high"]
    # pairing removes the prompt-to-prompt spread: a much narrower interval around the same shift
    assert result.loc["toxic", "paired_location_diff_hdi_low"] < 0.2 < result.loc["toxic", "paired_location_diff_hdi_high"]
    # (within a subset: the pooled `all` mixes the +0.2 and 0 shifts, so its paired differences are bimodal)
    width = (result["paired_location_diff_hdi_high"] - result["paired_location_diff_hdi_low"]).loc[["toxic", "nontoxic"]]
    two_sample = (result["location_diff_hdi_high"] - result["location_diff_hdi_low"]).loc[["toxic", "nontoxic"]]
    assert (width < 0.5 * two_sample).all()
    assert result.loc["toxic", "location_effect_size_hdi_low"] > 0.5 and (result["paired_prompts"] == [150, 150, 300]).all()
    assert (result["best_r_hat"] <= 1.01).all() and (result["best_normality"] > 1).all()


def test_a_best_fit_that_fails_its_gates_is_reported_as_failed_and_does_not_raise():
    """BEST is secondary: starved of draws it fails its gates; the rows say so, with no estimates, and the rate
    verdicts are not blocked (the stage writes the table; tests/test_workflow.py runs it through Snakemake)."""
    from finetox.best import best_failed

    rng = np.random.default_rng(2)
    means = pd.DataFrame([(v, "toxic", f"p{i}", x) for v in "ab" for i, x in enumerate(rng.beta(2, 8, 30))],
                         columns=["variant", "subset", "prompt_id", "mean_score"])
    starved = FitSettings(hdi_prob=0.95, prior="uniform", rope=None, draws=5, tune=5, chains=2, seed=1)
    rows, _ = compare_scores(means, [PAIR], starved)
    assert rows["best_status"].str.startswith("failed: ").all() and "ess_bulk" in rows["best_status"].iloc[0]
    assert rows["location_diff"].isna().all() and rows["best_ess_bulk"].notna().all()
    ok, _ = compare_scores(means, [PAIR], SETTINGS)
    assert (ok["best_status"] == "ok").all() and ok["location_diff"].notna().all()
    failed = best_failed([PAIR], {"a_vs_b": ["toxic", "all"]}, ValueError("sigma is 0"))
    assert failed["best_status"].tolist() == ["failed: ValueError: sigma is 0"] * 2


def test_best_is_bounded_by_a_seeded_sample_of_shared_prompts():
    """Past best_max_prompts, BEST sees a seeded sample of the shared prompts, the same for both variants (so
    the paired differences stay paired); below it, every prompt."""
    from finetox.best import _two_sample_groups

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


def test_best_columns_are_named_for_what_they_are():
    """Student-t locations, not means: on skewed scores (most prompts near 0.05, a tenth near 0.9) the location
    stays with the bulk while the mean follows the tail; the columns say `location`, and the table's schema has
    no BEST column called a mean."""
    from finetox.best import BEST_ESTIMATES
    from finetox.tables import SCHEMAS

    assert all("location" in key or key == "best_normality" for key in BEST_ESTIMATES)
    assert set(BEST_ESTIMATES) <= set(SCHEMAS["comparisons"])
    assert not {"score_diff_mean", "effect_size_mean", "paired_diff_mean"} & set(SCHEMAS["comparisons"])
    rng = np.random.default_rng(8)
    skewed = np.concatenate([rng.normal(0.05, 0.01, 180), rng.normal(0.9, 0.02, 20)])  # mean 0.135
    bulk_only = rng.normal(0.05, 0.01, 200)  # mean 0.05
    means = pd.DataFrame([(v, "toxic", f"p{i}", x) for v, values in (("a", skewed), ("b", bulk_only))
                          for i, x in enumerate(values)], columns=["variant", "subset", "prompt_id", "mean_score"])
    row = compare_scores(means, [PAIR], SETTINGS)[0].iloc[0]
    # the means differ by 0.085 (the tail); the locations by about 0: the t discounts the tail as outliers
    assert abs(row["location_diff"]) < 0.01 and row["best_normality"] < 5


def test_degenerate_scores_are_a_failed_row_and_a_malformed_table_fails():
    """Scores that give a Student-t nothing to fit (every prompt the same score) are a reported failure of that
    comparison x subset (DegenerateDataError), and the other subsets are fitted; a table without `mean_score` is a
    bug and raises. Only sampling.fit_errors become failed rows in the stage: never MemoryError, OSError or a
    KeyError."""
    from finetox.sampling import DegenerateDataError, DiagnosticsError, fit_errors
    from pymc.exceptions import SamplingError

    rng = np.random.default_rng(3)
    rows = [(v, "toxic", f"t{i}", x) for v in "ab" for i, x in enumerate(rng.beta(2, 8, 40))]
    rows += [(v, "silent", f"s{i}", 0.0) for v in "ab" for i in range(40)]  # e.g. every continuation empty
    means = pd.DataFrame(rows, columns=["variant", "subset", "prompt_id", "mean_score"])
    result = compare_scores(means, [PAIR], SETTINGS)[0].set_index("subset")
    assert result.loc["silent", "best_status"].startswith("failed: DegenerateDataError: a_vs_b/silent: the baseline")
    assert pd.isna(result.loc["silent", "location_diff"])
    assert result.loc["toxic", "best_status"] == "ok" and pd.notna(result.loc["toxic", "location_diff"])
    with pytest.raises(KeyError, match="mean_score"):
        compare_scores(means.rename(columns={"mean_score": "score"}), [PAIR], SETTINGS)
    caught = fit_errors()
    assert {DiagnosticsError, DegenerateDataError, SamplingError, FloatingPointError} <= set(caught)
    for bug in (MemoryError(), OSError(), KeyError("x"), TypeError(), ValueError(), RuntimeError()):
        assert not isinstance(bug, caught)


@pytest.mark.parametrize("error, reported", [(MemoryError("out of memory"), False), (OSError("disk full"), False),
                                             (AttributeError("a bug"), False), (FloatingPointError("overflow"), True)])
def test_the_best_stage_reports_fit_errors_and_fails_on_the_others(config, tmp_path, monkeypatch, error, reported):
    """The stage around BEST: a sampler's error is a failed row written to its table; MemoryError, OSError and a
    programming error leave the stage (and the job: the SLURM profile retries it with more memory)."""
    import finetox.best
    from finetox import stages
    from finetox.config import load
    from finetox.paths import Targets

    study = load(config)
    variants = Targets(study).compared_variants("demo", "demo", "profanity")
    means = pd.DataFrame([(v, "all", f"p{i}", 0.1 * i) for v in variants for i in range(5)],
                         columns=["variant", "subset", "prompt_id", "mean_score"])
    monkeypatch.setattr(stages, "_prompt_tables", lambda paths, columns: means)

    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(finetox.best, "compare_scores", failing)
    run = lambda: stages.best(study, "demo", "demo", "profanity", [], str(tmp_path / "best.csv"),
                              str(tmp_path / "best.nc"))
    if reported:
        run()
        rows = pd.read_csv(tmp_path / "best.csv")
        assert (rows["best_status"] == f"failed: {type(error).__name__}: {error}").all() and len(rows) > 0
    else:
        with pytest.raises(type(error)):
            run()
        assert not (tmp_path / "best.csv").exists()
