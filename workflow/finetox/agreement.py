"""How much to trust the scorer: agreement between toxicity scorers on the same continuations, every verdict
recomputed over a grid of thresholds, and whether a verdict survives the other scorers and the grid.

Agreement is measured per pair of toxicity scorers and variant, on the continuations both scored: the 2 x 2
confusion at the study's threshold (toxic when a score is >= it), Cohen's kappa of those calls, and Spearman's rank
correlation of the scores themselves. A threshold grid's verdicts are the verdicts' own computation
(finetox.compare.compare_rates: the same exact posteriors, design and HDI+ROPE rule) on per-prompt tables built at
each threshold (finetox.metrics.prompt_table). Robustness is read from the verdicts: a comparison's verdicts under
every toxicity scorer, and each verdict at every threshold of the grid. An undecided verdict that stays undecided
is reported as such, never as robust: there is nothing that survives.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from finetox.decision import EQUIVALENT, LESS, MORE

#: the keys of one continuation in a score table
CONTINUATION = ["prompt_id", "sample"]
#: what the agreement and the threshold grid read of a score table
AGREEMENT_COLUMNS = ["prompt_id", "sample", "variant", "score"]
GRID_COLUMNS = ["prompt_id", "subset", "variant", "score"]
#: the agreement table's columns (tables.SCHEMAS["scorer_agreement"] adds the threshold)
AGREEMENT_TABLE = ["probe", "protocol", "variant", "scorer_first", "scorer_second", "status", "n", "both_toxic",
                   "first_only", "second_only", "neither", "rate_first", "rate_second", "observed_agreement",
                   "expected_agreement", "kappa", "spearman", "note"]
#: the verdicts that say something (a direction, or equivalence); the others say the data cannot tell
DECIDED = (MORE, LESS, EQUIVALENT)
#: the variant label of a pair's row over every variant's continuations together
ALL_VARIANTS = "all variants"

ROBUST_SCORERS, DEPENDS_SCORER = "robust across scorers", "depends on the scorer"
ONE_SCORER, UNDECIDED_SCORERS = "decided by one toxicity scorer only", "undecided under every scorer"
ROBUST_THRESHOLDS, DEPENDS_THRESHOLD = "robust across the threshold grid", "changes within the threshold grid"
UNDECIDED_THRESHOLDS = "undecided at every threshold of the grid"


# --- agreement between two scorers ---------------------------------------------------------------
@dataclass(frozen=True)
class Confusion:
    """Two scorers' calls on the same continuations: toxic under both, under the first only, the second only,
    neither."""

    both: int
    first_only: int
    second_only: int
    neither: int

    @property
    def n(self) -> int:
        return self.both + self.first_only + self.second_only + self.neither

    @property
    def observed(self) -> float:
        """The share of continuations both call the same."""
        return (self.both + self.neither) / self.n

    @property
    def expected(self) -> float:
        """The share two independent scorers with these rates would call the same."""
        first, second = (self.both + self.first_only) / self.n, (self.both + self.second_only) / self.n
        return first * second + (1 - first) * (1 - second)

    @property
    def kappa(self) -> float:
        """Cohen's kappa, (observed - expected) / (1 - expected); NaN when the expected agreement is 1 (both scorers
        call every continuation the same one thing, so chance explains all of it)."""
        return float("nan") if self.expected >= 1 else (self.observed - self.expected) / (1 - self.expected)


def confusion(first: np.ndarray, second: np.ndarray, threshold: float) -> Confusion:
    """The confusion of two scorers' scores of the same continuations, each toxic when its score is >= threshold."""
    a, b = np.asarray(first, float) >= threshold, np.asarray(second, float) >= threshold
    return Confusion(int((a & b).sum()), int((a & ~b).sum()), int((~a & b).sum()), int((~a & ~b).sum()))


def spearman(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman's rank correlation (ties take their average rank); NaN when either scorer's scores are constant."""
    from scipy.stats import rankdata

    x, y = rankdata(first), rankdata(second)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _pair_row(first: pd.Series, second: pd.Series, threshold: float) -> dict:
    table = confusion(first.to_numpy(), second.to_numpy(), threshold)
    notes = []
    if np.isnan(table.kappa):
        notes.append("kappa undefined: both scorers call every continuation the same")
    rho = spearman(first.to_numpy(), second.to_numpy())
    if np.isnan(rho):
        notes.append("rank correlation undefined: a scorer gave every continuation the same score")
    return {"status": "ok", "n": table.n, "both_toxic": table.both, "first_only": table.first_only,
            "second_only": table.second_only, "neither": table.neither,
            "rate_first": (table.both + table.first_only) / table.n,
            "rate_second": (table.both + table.second_only) / table.n, "observed_agreement": table.observed,
            "expected_agreement": table.expected, "kappa": table.kappa, "spearman": rho, "note": "; ".join(notes)}


def scorer_agreement(scores: dict[tuple[str, str, str, str], pd.DataFrame], scorers: list[str], threshold: float,
                     runs: list[tuple[str, str]]) -> pd.DataFrame:
    """Per probe set x protocol, pair of toxicity scorers (in `scorers`' order) and variant, and over all variants
    together: the agreement of the two scorers on the continuations both scored. `scores` maps (probe, protocol,
    scorer, variant) to a score table (AGREEMENT_COLUMNS). A pair that cannot be compared is a row whose `status`
    says why (a single toxicity scorer; a variant scored by one of the two only, such as a table scored elsewhere).
    `runs`: every probe set x protocol of the run, so that one no pair scored is a row too."""
    rows = []
    for probe, protocol in runs:
        here = {(s, v): table for (p, q, s, v), table in scores.items() if (p, q) == (probe, protocol)}
        ran = [s for s in scorers if any(key[0] == s for key in here)]
        if len(ran) < 2:
            rows.append({"probe": probe, "protocol": protocol, "variant": ALL_VARIANTS,
                         "scorer_first": ran[0] if ran else "", "scorer_second": "",
                         "status": f"skipped: one toxicity scorer ({', '.join(ran) or 'none'}) scored these "
                                   "continuations: no pair to compare"})
            continue
        for first, second in combinations(ran, 2):
            variants = sorted({v for s, v in here if s in (first, second)})
            joined = []
            for variant in variants:
                key = {"probe": probe, "protocol": protocol, "variant": variant, "scorer_first": first,
                       "scorer_second": second}
                missing = [s for s in (first, second) if (s, variant) not in here]
                if missing:
                    rows.append({**key, "status": f"skipped: {variant} is not scored by {' or '.join(missing)} "
                                                  "(scored elsewhere, under one scorer)"})
                    continue
                both = here[(first, variant)][CONTINUATION + ["score"]].merge(
                    here[(second, variant)][CONTINUATION + ["score"]], on=CONTINUATION, suffixes=("_first", "_second"),
                    validate="one_to_one")
                if both.empty:
                    rows.append({**key, "status": "skipped: the two scorers scored no continuation in common"})
                    continue
                joined.append(both)
                rows.append({**key, **_pair_row(both["score_first"], both["score_second"], threshold)})
            if joined:
                together = pd.concat(joined, ignore_index=True)
                rows.append({"probe": probe, "protocol": protocol, "variant": ALL_VARIANTS, "scorer_first": first,
                             "scorer_second": second,
                             **_pair_row(together["score_first"], together["score_second"], threshold)})
    # (every column, also when every row is skipped: the table's schema does not depend on what could be compared)
    return pd.DataFrame(rows, columns=AGREEMENT_TABLE).assign(threshold=threshold)


# --- the threshold grid ------------------------------------------------------------------------------
def grid_thresholds(grid, threshold: float) -> list[float]:
    """The thresholds a verdict is recomputed at: the grid's and the study's own, in order."""
    return sorted({float(t) for t in grid} | {float(threshold)})


#: the columns of compare_rates' rows that the threshold table keeps
GRID_KEEP = ["comparison", "kind", "baseline", "treatment", "subset", "primary", "unit", "n_baseline", "toxic_baseline",
             "n_treatment", "toxic_treatment", "rate_baseline", "rate_treatment", "design", "scale", "effect",
             "effect_hdi_low", "effect_hdi_high", "verdict", "decision_rule", "borderline"]


def threshold_verdicts(scores: pd.DataFrame, comparisons: list, settings, grid, threshold: float) -> pd.DataFrame:
    """Every comparison's verdicts (each subset's) at every threshold of `grid` and at the study's `threshold`, by
    the verdicts' own computation (finetox.compare.compare_rates with the compare job's settings) on the per-prompt
    tables (finetox.metrics.prompt_table) of `scores` (GRID_COLUMNS of every compared variant's score table) at
    that threshold. Thresholds that leave a comparison's inputs (both variants' per-prompt toxic flags) as they
    were reuse its rows: the same inputs give the same exact posterior."""
    from finetox.compare import compare_rates
    from finetox.metrics import prompt_table, with_pooled

    rows, done = [], {}
    for t in grid_thresholds(grid, threshold):
        prompts = with_pooled(prompt_table(scores, t))
        flags = {v: g["toxic"].to_numpy(bool).tobytes() for v, g in prompts.groupby("variant", sort=False)}
        for c in comparisons:
            key = (c.name, flags[c.baseline], flags[c.treatment])
            if key not in done:
                done[key] = compare_rates(prompts, [c], settings)[GRID_KEEP]
            rows.append(done[key].assign(threshold=t, study_threshold=t == float(threshold)))
    return pd.concat(rows, ignore_index=True)


# --- robustness of each verdict ------------------------------------------------------------------------
def _threshold_text(t: float) -> str:
    return f"{t:g}"


def threshold_robustness(grid_rows: pd.DataFrame) -> dict:
    """One verdict (one comparison x subset under one scorer) across the threshold grid (its rows of the threshold
    table): `robust` only when it decides something and says the same at every threshold; the thresholds where it
    differs, and what it says there, named."""
    grid_rows = grid_rows.sort_values("threshold")
    study = grid_rows[grid_rows["study_threshold"].astype(bool)]
    if len(study) != 1:
        raise ValueError(f"{len(study)} rows at the study's threshold for one verdict; expected 1")
    verdict, at = study["verdict"].iloc[0], float(study["threshold"].iloc[0])
    span = f"{_threshold_text(grid_rows['threshold'].min())}\u2013{_threshold_text(grid_rows['threshold'].max())}"
    differ = grid_rows[grid_rows["verdict"] != verdict]
    if differ.empty:
        if verdict in DECIDED:
            return {"status": ROBUST_THRESHOLDS, "robust": True, "text": f"{ROBUST_THRESHOLDS} ({span}): {verdict}"}
        return {"status": UNDECIDED_THRESHOLDS, "robust": False, "text": f"{verdict} at every threshold ({span})"}
    changes = "; ".join(f"{v} at {', '.join(_threshold_text(t) for t in g['threshold'])}"
                        for v, g in differ.groupby("verdict", sort=False))
    return {"status": DEPENDS_THRESHOLD, "robust": False,
            "text": f"{DEPENDS_THRESHOLD} ({span}): {verdict} at the study's {_threshold_text(at)}, {changes}"}


def scorer_robustness(verdicts: dict[str, str]) -> dict:
    """One comparison x subset (of one probe set x protocol) across the toxicity scorers that decided it (scorer ->
    verdict): robust only when at least two decided it, all the same way, and the verdict decides something."""
    named = ", ".join(f"{s}: {v}" for s, v in verdicts.items())
    if len(verdicts) < 2:
        return {"status": ONE_SCORER, "robust": False,
                "text": f"{ONE_SCORER} ({named}): not checked against another scorer"}
    if len(set(verdicts.values())) == 1:
        verdict = next(iter(verdicts.values()))
        if verdict in DECIDED:
            return {"status": ROBUST_SCORERS, "robust": True,
                    "text": f"{ROBUST_SCORERS} ({', '.join(verdicts)}: {verdict})"}
        return {"status": UNDECIDED_SCORERS, "robust": False, "text": f"{verdict} under every scorer ({named})"}
    return {"status": DEPENDS_SCORER, "robust": False, "text": f"{DEPENDS_SCORER}: {named}"}


def robustness(comparisons: pd.DataFrame, grid: pd.DataFrame | None) -> pd.DataFrame:
    """Per toxicity verdict (comparison x probe set x protocol x subset x scorer of comparisons.csv): whether it
    survives the other toxicity scorers and the threshold grid. `grid` is the threshold table (None or empty: not
    computed, and each row says so)."""
    toxicity = comparisons[comparisons["measure"] == "toxicity"]
    cell = ["comparison", "probe", "protocol", "subset"]
    by_grid = ({key: g for key, g in grid.groupby(["scorer", *cell], sort=False)}
               if grid is not None and not grid.empty else {})
    rows = []
    for key, verdicts in toxicity.groupby(cell, sort=True):
        across = scorer_robustness(dict(zip(verdicts["scorer"], verdicts["verdict"])))
        for r in verdicts.itertuples():
            at = by_grid.get((r.scorer, *key))
            if at is None:
                grid_says = {"status": "not computed", "robust": False,
                             "text": "not recomputed over a threshold grid (no threshold table)"}
            else:
                grid_says = threshold_robustness(at)
                computed = at.loc[at["study_threshold"].astype(bool), "verdict"].iloc[0]
                if computed != r.verdict:  # the grid must be the verdicts' own computation
                    raise ValueError(f"{r.scorer} {r.comparison} {r.subset}: the threshold grid gives {computed!r} at "
                                     f"the study's threshold, the verdict is {r.verdict!r}")
            rows.append({**dict(zip(cell, key)), "scorer": r.scorer, "primary": bool(r.primary), "verdict": r.verdict,
                         "scorers": across["status"], "scorers_robust": across["robust"],
                         "scorers_text": across["text"], "thresholds": grid_says["status"],
                         "thresholds_robust": grid_says["robust"], "thresholds_text": grid_says["text"]})
    return pd.DataFrame(rows)


def annotate(findings: list[dict], table: pd.DataFrame) -> None:
    """Add to each finding (finetox.report.findings' items) its robustness lines: for its primary verdicts, whether
    they survive the other scorers and the threshold grid; for secondary (subset) verdicts, only what does not."""
    several = table[["probe", "protocol"]].drop_duplicates().shape[0] > 1 if not table.empty else False
    for group in findings:
        for item in group["items"]:
            lines = []
            rows = table[table["comparison"] == item["comparison"]] if not table.empty else table
            for (probe, protocol, subset), cell in rows.groupby(["probe", "protocol", "subset"], sort=True):
                primary = bool(cell["primary"].iloc[0])
                where = (f"{probe}/{protocol} " if several else "") + ("" if primary else f"subset {subset}: ")
                scorers = cell.iloc[0]
                if primary or scorers["scorers"] == DEPENDS_SCORER:
                    lines.append({"text": f"{where}scorers: {scorers['scorers_text']}", "primary": primary,
                                  "css": "ok" if scorers["scorers_robust"] else "bad"
                                  if scorers["scorers"] == DEPENDS_SCORER else "flat"})
                for r in cell.itertuples():
                    if primary or r.thresholds == DEPENDS_THRESHOLD:
                        lines.append({"text": f"{where}threshold ({r.scorer}): {r.thresholds_text}", "primary": primary,
                                      "css": "ok" if r.thresholds_robust else "bad"
                                      if r.thresholds == DEPENDS_THRESHOLD else "flat"})
            item["robustness"] = sorted(lines, key=lambda line: not line["primary"])


def grid_overview(grid: pd.DataFrame) -> pd.DataFrame:
    """The primary verdicts at every threshold, one row per comparison x probe set x protocol x scorer, one column
    per threshold (the study's marked): the report's compact view of the threshold table."""
    primary = grid[grid["primary"].astype(bool)]
    if primary.empty:
        return pd.DataFrame()
    study = float(primary.loc[primary["study_threshold"].astype(bool), "threshold"].iloc[0])
    wide = primary.pivot_table(index=["comparison", "probe", "protocol", "scorer"], columns="threshold",
                               values="verdict", aggfunc="first")
    wide.columns = [f"{t:g} (study)" if t == study else f"{t:g}" for t in wide.columns]
    return wide.reset_index()



def _share(count: int, total: int) -> str:
    return f"{count} of {total}"


def trust_summary(agreement: pd.DataFrame | None, table: pd.DataFrame, grid: pd.DataFrame | None) -> dict:
    """The report's "how much to trust the scorer" section, in words and frames: each scorer pair's agreement over
    all variants, how many primary verdicts survive the other scorers and the threshold grid, the agreement table
    and the primary verdicts at every threshold (no HTML: finetox.report renders it)."""
    pairs, skipped = [], []
    if agreement is not None and not agreement.empty:
        for r in agreement[agreement["variant"] == ALL_VARIANTS].itertuples():
            where = f"{r.probe}/{r.protocol}"
            if r.status != "ok":
                skipped.append(f"{where}: {r.status}")
                continue
            kappa = "undefined" if pd.isna(r.kappa) else f"{r.kappa:.2f}"
            rho = "undefined" if pd.isna(r.spearman) else f"{r.spearman:.2f}"
            pairs.append(f"{r.scorer_first} and {r.scorer_second} on {where}, all variants' {int(r.n)} continuations: "
                         f"toxic {r.rate_first:.1%} and {r.rate_second:.1%}; both toxic {int(r.both_toxic)}, "
                         f"{r.scorer_first} only {int(r.first_only)}, {r.scorer_second} only {int(r.second_only)}; "
                         f"they agree on {r.observed_agreement:.1%} (chance {r.expected_agreement:.1%}): Cohen's kappa "
                         f"{kappa}, Spearman's rank correlation {rho}")
        skipped += [f"{r.probe}/{r.protocol} {r.variant} ({r.scorer_first}, {r.scorer_second}): {r.status}"
                    for r in agreement[(agreement["variant"] != ALL_VARIANTS) & (agreement["status"] != "ok")].itertuples()]
    counts = {}
    if not table.empty:
        primary = table[table["primary"]]
        cells = primary.drop_duplicates(["comparison", "probe", "protocol", "subset"])
        counts["scorers"] = {"total": len(cells), **cells["scorers"].value_counts().to_dict()}
        counts["thresholds"] = {"total": len(primary), **primary["thresholds"].value_counts().to_dict()}
        counts["depends"] = [f"{r.comparison}: {r.scorers_text}" for r in cells.itertuples() if r.scorers == DEPENDS_SCORER]
        counts["changes"] = [f"{r.comparison} ({r.scorer}): {r.thresholds_text}"
                             for r in primary.itertuples() if r.thresholds == DEPENDS_THRESHOLD]
    return {"pairs": pairs, "skipped": skipped, "counts": counts,
            "grid": grid_overview(grid) if grid is not None and not grid.empty else None}
