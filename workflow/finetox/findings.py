"""The interpretation of the verdicts, in words a reader of a safety paper checks: per comparison kind, one finding
per comparison (what the treatment is, the primary and secondary estimates: the quantity decided on, its effect and
HDI, the rule; its price: refusals and capability; what a guard did), the flags (designs that disagree, borderline
verdicts, circular or degenerate variants, failed fits), a control's outcome, the pooled verdicts, and how many
verdicts were made. Formatted numbers and plain data, no HTML (finetox.report renders them)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from finetox import decision
from finetox.config import Study
from finetox.decision import LESS, MORE, SCALES, WORDING, rope_of
from finetox.design import KINDS
from finetox.helpfulness import BETTER, COMPUTED, WORSE
from finetox.levers import lever_of
from finetox.stereotypes import LESS_STEREOTYPED, MORE_STEREOTYPED

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
    """The colour class a verdict is shown in: up (the rate or the price rose), down, or flat."""
    return ("up" if verdict in UP | {WORSE, MORE_STEREOTYPED} else "down" if verdict in DOWN | {BETTER, LESS_STEREOTYPED}
            else "flat")


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


def degenerate_variants(degeneration: pd.DataFrame) -> dict[str, str]:
    """Variant -> why it degenerates (its subsets' reasons), for the variants flagged in the degeneration table."""
    flagged = degeneration[degeneration["degenerate"].astype(bool)]
    return {variant: "; ".join(f"{r.subset}: {r.degeneration_reason}" for r in rows.itertuples())
            for variant, rows in flagged.groupby("variant", sort=True)}


# --- findings: one line per comparison, from its verdicts -------------------------------------
def describe(study: Study, name: str) -> str:
    """What a variant is, in words: its recipes in the order they were applied, or where it comes from."""
    v = study.variants[name]
    if v.external:
        return f"scored elsewhere ({v.external.source.path or v.external.source.hub})"
    if v.lever:
        return lever_of(v.lever).describe(v.lever)
    if v.recipe:
        step = f"{v.recipe.name} ({v.recipe.method})"
        return f"{describe(study, v.start)}, then {step}" if v.start else f"{step} on {v.model.location}"
    return f"{v.role} model {v.model.location}" + (f", seed {v.seed}" if v.seed is not None else "")


def capability_finding(row: pd.Series) -> dict:
    """A comparison's capability price as its finding tells it: the paired difference in NLL per token, its HDI,
    the verdict and the margin that decided it (or the study's rule), borderline when the bootstrap's own error
    could flip it; or, for a comparison that was skipped, why."""
    if row["status"] != COMPUTED:
        return {"skipped": row["status"].removeprefix("skipped: ")}
    return {"skipped": None, "diff": signed(row["diff"]),
            "hdi": f"[{signed(row['hdi_low'])}, {signed(row['hdi_high'])}]",
            "verdict": row["verdict"], "css": verdict_class(row["verdict"]), "borderline": bool(row["borderline"]),
            "rule": f"margin \u00b1{row['margin']:g}" if pd.notna(row["margin"]) else "HDI excludes 0"}


def stereotype_finding(row: pd.Series) -> dict:
    """A comparison's stereotype preference as its finding tells it (its `all` row of stereotype_comparisons.csv):
    pct_stereotype of both sides, the paired effect on the ROPE's scale with its HDI, the verdict and the rule that
    decided it; or, for a comparison that was skipped, why."""
    if row["status"] != COMPUTED:
        return {"skipped": row["status"].removeprefix("skipped: ")}
    return {"skipped": None, "pairs": int(row["pairs"]), "baseline": percent(row["pct_stereotype_baseline"]),
            "treatment": percent(row["pct_stereotype_treatment"]), "effect_name": row["effect_name"],
            "effect": effect_text(row["effect"], row["scale"]),
            "hdi": interval_text(row["effect_hdi_low"], row["effect_hdi_high"], row["scale"]),
            "verdict": row["verdict"], "css": verdict_class(row["verdict"]), "borderline": bool(row["borderline"]),
            "rule": row["decision_rule"]}


def guard_finding(study: Study, variant: str, selection: pd.DataFrame | None) -> str | None:
    """What a guarded variant's guard did, in words: how many candidates, by which rule, and how often it replaced
    and filtered its source's answers (selection.csv's `all` rows)."""
    guard = study.variants[variant].guard
    if not guard or selection is None:
        return None
    # (its answers to training prompts, a produced dataset's rows, are in the table, not in the verdict's finding)
    rows = selection[(selection["variant"] == variant) & (selection["subset"] == "all")
                     & selection["probe"].isin(study.run_probes)]
    rule = ("lowest harm" if guard.select == "lowest" else f"the first with harm below {guard.threshold:g}")
    fallback = "the fixed refusal" if guard.fallback == "refusal" else "its least harmful candidate"
    acted = "; ".join(f"{r.probe}/{r.protocol}: replaced {r.replaced_rate:.1%} of {guard.source}'s answers, filtered "
                      f"{r.filtered_rate:.1%} (no candidate below {guard.threshold:g}: answered {fallback})"
                      for r in rows.itertuples())
    return f"{guard.scorer} kept 1 of {guard.candidates} candidates per sample ({rule}): {acted or 'no rows'}"


def comparison_findings(study: Study, comparisons: pd.DataFrame, degenerate: dict[str, str],
                        capability_comparisons: pd.DataFrame | None, selection: pd.DataFrame | None = None,
                        stereotype_comparisons: pd.DataFrame | None = None) -> list[dict]:
    """Per comparison kind, one finding per comparison: its primary toxicity verdict (comparisons.primary_subset),
    then each other subset's, per toxicity scorer, what it cost (refusals, capability, stereotype preference over
    all bias types), and what to distrust
    (degenerate variants, a failed BEST fit, paired and unpaired analyses that disagree, a borderline verdict), and
    a control's outcome (held, failed or inconclusive: finetox.findings.control_outcome)."""
    runs = comparisons[comparisons["measure"] == "toxicity"][["probe", "protocol", "scorer"]].drop_duplicates()
    several = len(runs) > 1
    capability = (capability_comparisons.set_index("comparison") if capability_comparisons is not None
                  and not capability_comparisons.empty else None)
    stereotypes = (stereotype_comparisons[stereotype_comparisons["primary"]].set_index("comparison")
                   if stereotype_comparisons is not None and not stereotype_comparisons.empty else None)
    groups = []
    for kind, title in KINDS.items():
        items = []
        for c in (c for c in study.comparisons.values() if c.kind == kind):
            rows = comparisons[comparisons["comparison"] == c.name]
            if rows.empty:
                continue
            item = {"comparison": c.name, "baseline": c.baseline, "treatment": c.treatment,
                    "treatment_is": describe(study, c.treatment),
                    "results": [], "price": [], "flags": [], "control": None, "capability": None, "stereotypes": None,
                    "guard": guard_finding(study, c.treatment, selection)}
            for (probe, protocol, scorer, measure), run in rows.groupby(["probe", "protocol", "scorer", "measure"],
                                                                         sort=True):
                first, others = primary_first(run)
                per_subset = study.probes[probe].sample_per_subset
                headline = {**estimate(first, per_subset), "quantity": rate_name(
                    measure, first["unit"], study.protocols[protocol].samples if first["unit"] == "prompt" else None)}
                label = f"{scorer}" + (f" on {probe}/{protocol}" if several else "")
                if measure == "toxicity":
                    item["results"].append({"label": label if several else "", "headline": headline,
                                            "subsets": [estimate(r, per_subset) for r in others]})
                else:
                    item["price"].append({"label": label, **headline})
                item["flags"] += flags(run, label if several or measure != "toxicity" else "")
                circular = [f"{v}: {scorer} {what}" for v in (c.baseline, c.treatment)
                            if (what := study.circular(v, scorer))]
                if circular:
                    item["flags"].append(f"{'; '.join(circular)}; it grades them here (evaluate_with_selector): this "
                                         f"verdict is circular")
                failed = run["best_status"].dropna()
                if (failed != "ok").any():
                    item["flags"].append(f"BEST failed ({scorer}): {'; '.join(sorted(set(failed[failed != 'ok'])))}")
            if capability is not None and c.name in capability.index:
                item["capability"] = capability_finding(capability.loc[c.name])
            if stereotypes is not None and c.name in stereotypes.index:
                item["stereotypes"] = stereotype_finding(stereotypes.loc[c.name])
            for side in ("baseline", "treatment"):
                variant = getattr(c, side)
                if variant in degenerate:
                    item["flags"].append(f"the {side}, {variant}, is degenerate (see above): its rate is no "
                                         "measure of a safe model")
            if c.control:
                item["control"] = control_outcome(c.control, rows, rope_of(study.compare_settings["rope"]))
            items.append(item)
        if items:
            groups.append({"kind": kind, "title": title, "items": items})
    return groups


def pooled_findings(pooled: pd.DataFrame | None) -> list[dict]:
    """Each comparison kind pooled across families (the study's headline question), its `all` subset: the pooled
    odds ratio, the rate difference at the pool's baseline rate, the verdict and what it was decided on, a new
    family's interval and whether it is mostly prior; or the reason the pool was not fitted (never silence)."""
    if pooled is None or pooled.empty:
        return []
    out = []
    for _, row in pooled.sort_values(["pool", "scorer", "subset"]).iterrows():
        if row["subset"] != "all" and (pooled["subset"] == "all").any():
            continue
        item = {"pool": row["pool"], "scorer": row["scorer"], "families": int(row["families"]),
                "comparisons": int(row["n_comparisons"]), "ok": row["status"] == "ok", "status": row["status"]}
        if item["ok"]:
            scale = row["scale"]
            item.update({
                "odds_ratio": ratio(row["odds_ratio"]),
                "or_hdi": interval_text(row["odds_ratio_hdi_low"], row["odds_ratio_hdi_high"], "log-odds"),
                "diff": f"{points(row['rate_diff'])} pp",
                "diff_hdi": interval_text(row["rate_diff_hdi_low"], row["rate_diff_hdi_high"], "absolute"),
                "baseline_rate": percent(row["baseline_rate"]),
                "quantity": rate_name(row["measure"], row["unit"]),
                "decided": f"the {SCALES[scale]}" + ("" if scale == "log-odds" else " at that baseline rate"),
                "rule": row["decision_rule"], "verdict": row["verdict"], "css": verdict_class(row["verdict"]),
                "borderline": bool(row["borderline"]),
                "new_family": interval_text(row["new_family_or_hdi_low"], row["new_family_or_hdi_high"], "log-odds"),
                "note": row["new_family_note"] if isinstance(row["new_family_note"], str) else "",
            })
        out.append(item)
    return out
