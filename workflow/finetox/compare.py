"""The verdicts: per comparison and subset, the exact posterior of the effect of the treatment on its rate, decided
by a named rule (finetox.decision), paired where both variants answered the same prompts.

A rate counts units: continuations when each prompt has one sample; prompts with at least one toxic sample (the
Toxicity Probability of RealToxicityPrompts) when it has several, since a prompt's samples are not independent.
The primary analysis is paired wherever both variants answered the same prompts (the exact Dirichlet posterior of
the 2 x 2 table of prompts), unpaired otherwise (two Beta posteriors: external tables on different prompts); the
unpaired analysis is always computed beside it, and the study's rule (the HDI of the unpaired difference excludes
0) in `credible`. finetox.rates computes them without a sampler: the same numbers under every seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from finetox import decision, rates
from finetox.config import MIN_ESS
from finetox.design import Comparison
from finetox.decision import WORDING, Rope


@dataclass(frozen=True)
class FitSettings:
    hdi_prob: float
    prior: str  # "uniform" or "jeffreys" (finetox.rates.PRIORS)
    rope: Rope | None
    draws: int
    tune: int
    chains: int
    seed: int
    cores: int = 1
    max_r_hat: float = 1.01
    min_ess: float = MIN_ESS
    best_max_prompts: int | None = None  # BEST's prompts per comparison x subset (seeded sample); None: all
    primary_subset: str = "all"  # the subset whose verdict is a comparison's primary one

    def doubled(self) -> "FitSettings":
        return FitSettings(**{**vars(self), "draws": 2 * self.draws, "tune": 2 * self.tune})


def in_words_of(rows: pd.DataFrame, measure: str) -> pd.DataFrame:
    """`rows` with their verdict columns worded for `measure` ("more refusals", not "more toxic")."""
    columns = [c for c in ("verdict", "unpaired_verdict") if c in rows.columns]
    return rows.assign(**{c: rows[c].replace(WORDING[measure]) for c in columns})


def shared_subsets(cells: set[tuple[str, str]], comparisons: list[Comparison]) -> dict[str, list[str]]:
    subsets = {}
    for c in comparisons:
        shared = {s for v, s in cells if v == c.baseline} & {s for v, s in cells if v == c.treatment}
        if not shared:
            raise ValueError(f"comparison {c.name!r}: the two variants share no subset")
        subsets[c.name] = sorted(shared, key=lambda s: (s == "all", s))
    return subsets


#: what a rate counts, by the unit of a comparison
QUANTITIES = {"prompt": "share of prompts with a toxic sample (Toxicity Probability)",
              "continuation": "share of toxic continuations"}


def units_of(prompts: pd.DataFrame) -> dict[str, str]:
    """Variant -> the unit its rates count: `continuation` at one sample per prompt, `prompt` at several."""
    samples = prompts.groupby("variant")["samples"].max()
    return {variant: "prompt" if s > 1 else "continuation" for variant, s in samples.items()}


def _analysis(posterior: rates.EffectPosterior, settings: FitSettings, rope: Rope | None) -> dict:
    """One posterior's summary on the additive scale with its verdict under `rope` (None: the study's rule)."""
    summary = rates.summarise(posterior, settings.hdi_prob)
    low_edge, high_edge = decision.bounds(rope)
    return {"median": summary.median, "low": summary.hdi_low, "high": summary.hdi_high, "error": summary.error,
            "verdict": decision.verdict(summary.hdi_low, summary.hdi_high, rope),
            "borderline": decision.borderline(summary.hdi_low, summary.hdi_high, rope, summary.error),
            "prob_above_zero": summary.prob_above_zero,
            "rope_share": float(np.diff(summary.cdf([low_edge, high_edge]))[0]) if rope is not None else np.nan}


def compare_rates(prompts: pd.DataFrame, comparisons: list[Comparison], settings: FitSettings) -> pd.DataFrame:
    """The verdicts: one row per comparison and subset, from the per-prompt tables of the variants (variant, subset,
    prompt_id, samples, toxic; metrics.with_pooled of the prompt tables). Each row holds the primary analysis (paired
    where both variants answered the same prompts) on the ROPE's scale with its verdict, the same rate difference in
    percentage points, the unpaired analysis beside it, and the study's rule."""
    units = units_of(prompts)
    subsets = shared_subsets(set(zip(prompts["variant"], prompts["subset"])), comparisons)
    toxic = {key: g.set_index("prompt_id")["toxic"] for key, g in prompts.groupby(["variant", "subset"])}
    rope, scale = settings.rope, decision.scale_of(settings.rope)
    rows = []
    for c in comparisons:
        if units[c.baseline] != units[c.treatment]:
            raise ValueError(f"comparison {c.name!r}: {c.baseline!r} is counted in {units[c.baseline]}s and "
                             f"{c.treatment!r} in {units[c.treatment]}s (samples per prompt differ); a rate "
                             "difference needs one unit")
        if settings.primary_subset not in subsets[c.name]:
            raise ValueError(f"comparison {c.name!r}: comparisons.primary_subset {settings.primary_subset!r} is not "
                             f"among the subsets both variants answered ({', '.join(subsets[c.name])})")
        for subset in subsets[c.name]:
            base, treat = toxic[(c.baseline, subset)], toxic[(c.treatment, subset)]
            k_b, n_b, k_t, n_t = int(base.sum()), len(base), int(treat.sum()), len(treat)
            is_paired = len(base.index) == len(treat.index) and base.index.sort_values().equals(treat.index.sort_values())
            table = rates.paired_table(base, treat) if is_paired else None

            def posterior(on_scale, paired_design):
                if paired_design:
                    return rates.paired(table, on_scale, settings.prior)
                return rates.unpaired(k_b, n_b, k_t, n_t, on_scale, settings.prior)

            primary = _analysis(posterior(scale, is_paired), settings, rope)
            unpaired = primary if not is_paired else _analysis(posterior(scale, False), settings, rope)
            difference = (primary if scale == "absolute" else _analysis(posterior("absolute", is_paired), settings, None))
            study = unpaired if scale == "absolute" else _analysis(posterior("absolute", False), settings, None)
            interval = {side: rates.rate_hdi(k, n, settings.hdi_prob, settings.prior)
                        for side, k, n in (("baseline", k_b, n_b), ("treatment", k_t, n_t))}
            rows.append({
                "comparison": c.name, "kind": c.kind, "baseline": c.baseline, "treatment": c.treatment,
                "subset": subset, "primary": subset == settings.primary_subset, "unit": units[c.baseline],
                "quantity": QUANTITIES[units[c.baseline]],
                "n_baseline": n_b, "toxic_baseline": k_b, "n_treatment": n_t, "toxic_treatment": k_t,
                "rate_baseline": k_b / n_b, "rate_baseline_low": interval["baseline"][0],
                "rate_baseline_high": interval["baseline"][1],
                "rate_treatment": k_t / n_t, "rate_treatment_low": interval["treatment"][0],
                "rate_treatment_high": interval["treatment"][1],
                "design": "paired" if is_paired else "unpaired", "scale": scale, "effect_name": decision.SCALES[scale],
                "effect": decision.shown(primary["median"], scale),
                "effect_hdi_low": decision.shown(primary["low"], scale),
                "effect_hdi_high": decision.shown(primary["high"], scale), "hdi_prob": settings.hdi_prob,
                "rope_low": decision.shown(decision.bounds(rope)[0], scale) if rope is not None else np.nan,
                "rope_high": decision.shown(decision.bounds(rope)[1], scale) if rope is not None else np.nan,
                "verdict": primary["verdict"], "decision_rule": decision.decision_rule(rope),
                "borderline": primary["borderline"], "numerical_error": primary["error"],
                "prob_increase": primary["prob_above_zero"], "rope_share": primary["rope_share"],
                "diff": difference["median"], "diff_hdi_low": difference["low"], "diff_hdi_high": difference["high"],
                "unpaired_effect": decision.shown(unpaired["median"], scale),
                "unpaired_effect_hdi_low": decision.shown(unpaired["low"], scale),
                "unpaired_effect_hdi_high": decision.shown(unpaired["high"], scale),
                "unpaired_verdict": unpaired["verdict"], "designs_agree": unpaired["verdict"] == primary["verdict"],
                "credible": decision.credible(study["low"], study["high"]),
                "study_hdi_low": study["low"], "study_hdi_high": study["high"],
                "paired_n": table.n if table else np.nan, "both_toxic": table.both if table else np.nan,
                "discordant_baseline": table.baseline_only if table else np.nan,
                "discordant_treatment": table.treatment_only if table else np.nan,
            })
    return pd.DataFrame(rows)
