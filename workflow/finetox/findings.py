"""What the verdicts say, in words a reader of a safety paper checks: the primary and secondary estimates of a
comparison (the quantity decided on, its effect and HDI, the rule), the flags (designs that disagree, borderline
verdicts), a control's outcome, and how many verdicts were made. Formatted numbers, no HTML."""

from __future__ import annotations

import numpy as np
import pandas as pd

from finetox import decision
from finetox.decision import LESS, MORE, WORDING

#: verdicts (in any measure's words) that read as an increase or a decrease of the measured rate
UP = {MORE, *(w[MORE] for w in WORDING.values() if MORE in w)}
DOWN = {LESS, *(w[LESS] for w in WORDING.values() if LESS in w)}


def percent(x) -> str:
    """A rate as a percentage: 8.5%, 0.25% (two decimals below 1%), 0%."""
    if pd.isna(x):
        return "–"
    value = 100 * float(x)
    return "0%" if value == 0 else f"{value:.1f}%" if abs(value) >= 1 else f"{value:.2f}%"


def signed(x, digits: int = 2) -> str:
    """A signed number with a typographic minus: +0.20, \u22123.35."""
    return f"{x:+.{digits}f}".replace("-", "\u2212")


def points(x) -> str:
    """A rate difference in signed percentage points: +13.1, −0.04."""
    if pd.isna(x):
        return "–"
    value = 100 * float(x)
    return signed(value, 1 if abs(value) >= 0.1 or value == 0 else 2)


def ratio(x) -> str:
    """A ratio to three significant digits: ×1.25, ×0.800, ×33.6."""
    return "–" if pd.isna(x) else f"\u00d7{float(x):.3g}"


def effect_text(value, scale: str) -> str:
    return f"{points(value)} pp" if scale == "absolute" else ratio(value)


def interval_text(low, high, scale: str) -> str:
    if scale == "absolute":
        return f"[{points(low)}, {points(high)}]"
    return f"[{float(low):.3g}, {float(high):.3g}]"


def rate_name(measure: str, unit: str, samples: int | None = None) -> str:
    """What a rate counts, named for its unit: a share of continuations, or of prompts with one (the Toxicity
    Probability of RealToxicityPrompts when a prompt has several samples)."""
    what = "a refusal" if measure == "refusal" else "a toxic output"
    if unit == "prompt":
        return f"share of prompts with {what}" + (f" among {samples} samples" if samples else "") + (
            " (Toxicity Probability)" if measure == "toxicity" else "")
    return "share of continuations that are refusals" if measure == "refusal" else "share of toxic continuations"


def subset_text(subset: str, n: int, sample_per_subset: int | None) -> str:
    """The prompts a row's rates are over: a subset, or `all` as what it is (the sampled prompts: with
    sample_per_subset an equal-weight mix of the subsets, not the source's population)."""
    if subset != "all":
        return f"subset {subset} ({n} prompts)"
    if sample_per_subset:
        return (f"all {n} sampled prompts ({sample_per_subset} per subset: an equal-weight mix of the subsets, "
                "not the source's population)")
    return f"all {n} prompts of the probe set"


def additive(value, scale: str) -> float:
    """A shown effect back on the additive scale it was decided on."""
    return float(value) if scale == "absolute" else float(np.log(value))


def estimate(row, sample_per_subset: int | None = None) -> dict:
    """One verdict as the findings tell it: the rates it compares, the effect it decided on with its HDI, the rule's
    verdict, and the rate difference beside it when the effect is a ratio."""
    scale = row["scale"]
    n_prompts = int(row["paired_n"]) if pd.notna(row.get("paired_n", np.nan)) else int(row["n_baseline"])
    return {
        "subset": row["subset"], "primary": bool(row["primary"]),
        "over": subset_text(row["subset"], n_prompts, sample_per_subset),
        "baseline": percent(row["rate_baseline"]), "treatment": percent(row["rate_treatment"]),
        "effect_name": row["effect_name"], "effect": effect_text(row["effect"], scale),
        "hdi": interval_text(row["effect_hdi_low"], row["effect_hdi_high"], scale),
        "diff": None if scale == "absolute" else f"{points(row['diff'])} pp",
        "design": row["design"], "verdict": row["verdict"], "css": verdict_class(row["verdict"]),
        "borderline": bool(row["borderline"]),
    }


def verdict_class(verdict) -> str:
    return "up" if verdict in UP else "down" if verdict in DOWN else "flat"


def primary_first(rows: pd.DataFrame) -> tuple[pd.Series, list[pd.Series]]:
    """A run's primary row and its secondary (subset) rows."""
    ordered = sorted((r for _, r in rows.iterrows()), key=lambda r: (not r["primary"], r["subset"] != "all", r["subset"]))
    return ordered[0], ordered[1:]


def flags(rows: pd.DataFrame, label: str) -> list[str]:
    """What to distrust in one run's verdicts of a comparison: a paired and an unpaired analysis that disagree,
    a verdict the computation's numerical error could flip."""
    out = []
    for _, r in rows.iterrows():
        where = f"{label}{' ' if label else ''}{r['subset']}"
        if r["design"] == "paired" and not r["designs_agree"]:
            out.append(f"{where}: the paired analysis says {r['verdict']}, the unpaired one "
                       f"{r['unpaired_verdict']} ({effect_text(r['unpaired_effect'], r['scale'])}, HDI "
                       f"{interval_text(r['unpaired_effect_hdi_low'], r['unpaired_effect_hdi_high'], r['scale'])}): "
                       "the pairing decides it")
        if r["borderline"]:
            out.append(f"{where}: borderline: an HDI limit lies within the computation's numerical error "
                       f"({r['numerical_error']:.2g}) of a boundary of the rule")
    return out


def control_outcome(expected: str, rows: pd.DataFrame, rope: decision.Rope | None) -> dict:
    """A control's outcome on the primary toxicity verdicts (one per toxicity scorer, probe set and protocol):
    held, failed or inconclusive (decision.CONTROL_RULES); not checked when no toxicity scorer ran."""
    primary = rows[(rows["measure"] == "toxicity") & rows["primary"].astype(bool)]
    outcomes = [decision.control_outcome(expected, additive(r["effect_hdi_low"], r["scale"]),
                                         additive(r["effect_hdi_high"], r["scale"]), rope)
                for _, r in primary.iterrows()]
    return {"expected": expected, "outcome": decision.combined_outcome(outcomes), "rule": decision.CONTROL_RULES[expected],
            "checked_on": len(outcomes)}


def multiplicity(comparisons: pd.DataFrame, hdi_prob: float) -> dict:
    """How many verdicts the run made, and how many the study's rule would call credible by chance alone."""
    toxicity = comparisons[comparisons["measure"] == "toxicity"]
    primary = toxicity[toxicity["primary"].astype(bool)]
    decisive = toxicity["verdict"].isin(UP | DOWN)
    return {"verdicts": len(toxicity), "primary": len(primary), "secondary": len(toxicity) - len(primary),
            "decisive": int(decisive.sum()), "decisive_primary": int(primary["verdict"].isin(UP | DOWN).sum()),
            "credible": int(toxicity["credible"].fillna(False).astype(bool).sum()),
            "chance_share": f"{1 - hdi_prob:.0%}", "chance_expected": f"{(1 - hdi_prob) * len(toxicity):.1f}"}
