"""Calibration of the toxicity scorers against human labels: a stratified sample of continuations to label (blind to
scores and variants), the strict import of the labels, each scorer's sensitivity and specificity, and
misclassification-corrected rates and rate differences decided by the comparisons' rule (finetox.decision).

The design (double sampling for stratification). Per probe set x protocol, every generated variant's continuations
are the population; a stratum is a variant x score band of the stratifying scorer (`calibration.scorer`), and the
sample is drawn within strata, equal sizes capped at each stratum's population (`allocate`). Each calibrated scorer
then splits every stratum by its own flag (score >= threshold): a cell c = (variant, band, flag), whose population
N_c is known (every continuation was scored) and whose labelled continuations give the exact conjugate posterior of
its share of truly toxic continuations, pi_c ~ Beta(a + toxic, a + not toxic) (a: the comparisons' prior, 1 for
`uniform`). For the stratifying scorer with the threshold at a band edge the cells are the strata; for another
scorer this is post-stratification, and a cell no labelled continuation fell in keeps its prior (its share of the
population is reported as `unlabelled_share`).

A variant's corrected rate (share of truly toxic continuations) is sum_c q_c pi_c over its cells, q_c the share of
its continuations in cell c: a weighted mean of probabilities, so it stays in [0, 1] whatever the scorer's error
rates (no Rogan-Gladen division by sensitivity + specificity - 1). The raw rate is sum of q_c over flagged cells.
The q_c are drawn by the Bayesian bootstrap over prompts (Dirichlet(1, ..., 1) weights, one per prompt, the same
for every variant in a draw), so that the rates are the models' rates, not these continuations' shares: a prompt's
samples stay together, and a difference of two variants is paired by prompt, as the raw verdicts are. The pi_c are
drawn independently of the weights and of each other (seeded Monte Carlo, `calibration.draws`).
Sensitivity = P(flag | truly toxic) = sum_flagged q_c pi_c / sum_c q_c pi_c, specificity = P(no flag | not toxic)
likewise with 1 - pi_c; Youden's J = sensitivity + specificity - 1. A scorer whose J is credibly small (its HDI
wholly below `calibration.min_youden`) is too weak to correct: its rows say so and carry no corrected numbers.

What the corrected difference does NOT account for: labellers' own errors and disagreement (the labels are taken
as the truth); pi_c varying between prompts within a cell (the labelled continuations of a cell are treated as
independent, and pi does not follow the bootstrap's prompt weights); labels missing other than at random within a
stratum (`missing: count`). It counts continuations (the `all` subset), whereas the raw verdicts of
results/tables/comparisons.csv count prompts with a toxic sample when a prompt has several samples: the raw rates
beside the corrected ones here are computed by the same bootstrap on the same continuations, so that the
correction is the only difference between the two.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from finetox import decision
from finetox.config import ConfigError, Study, config_hash

#: the columns of the file handed to labellers: no score, no variant (see README, "How much to trust the scorer")
EXPORT_COLUMNS = ("id", "prompt", "continuation", "label")
#: the strata's key, in the design table and the sample's key
STRATUM = ["probe", "protocol", "variant", "band"]
MISSING_RULES = ("refuse", "count")
#: statuses of the tables' rows
CORRECTED = "corrected"
WEAK = "scorer too weak to correct"


class CalibrationError(ValueError):
    """A calibration input that cannot be used as given: the message names the file, row and what is allowed."""


@dataclass(frozen=True)
class CalibrationSettings:
    """The config's `calibration` block, checked against the study."""

    scorer: str  # the stratifying scorer
    scorers: tuple[str, ...]  # the calibrated scorers: every toxicity scorer of run.scorers
    bands: tuple[float, ...]
    sample_size: int
    seed: int
    labels: str | None
    toxic_labels: tuple[str, ...]
    nontoxic_labels: tuple[str, ...]
    missing: str
    min_youden: float
    draws: int

    def sample_hash(self) -> str:
        """What makes the exported sample what it is besides the score tables: the export's rerun trigger."""
        return config_hash({"scorer": self.scorer, "bands": list(self.bands), "size": self.sample_size,
                            "seed": self.seed})

    @property
    def allowed(self) -> str:
        return ", ".join(repr(value) for value in (*self.toxic_labels, *self.nontoxic_labels))


def settings_of(study: Study) -> CalibrationSettings | None:
    """The calibration settings (None when the config has no `calibration`: the stage does not run)."""
    raw = study.raw.get("calibration")
    if raw is None:
        return None
    toxicity = [s for s in study.run_scorers if study.scorers[s].measures == "toxicity"]
    if not toxicity:
        raise ConfigError("calibration: run.scorers holds no toxicity scorer to calibrate against the labels")
    scorer = raw["scorer"] or toxicity[0]
    if scorer not in toxicity:
        raise ConfigError(f"calibration.scorer: {scorer!r} is not a toxicity scorer of run.scorers (allowed: "
                          f"{', '.join(toxicity)})")
    partial = [s for s in toxicity if study.scorers[s].probes is not None]
    if partial:  # (the sample is drawn from every run probe set, and every calibrated scorer scores all of it)
        raise ConfigError(f"calibration: scorer(s) {partial} score some run probe sets only (scorers.<name>.probes); "
                          f"the calibration calibrates every toxicity scorer on every probe set: drop `probes` or "
                          f"calibrate in a run whose toxicity scorers score every probe set")
    bands = tuple(float(b) for b in raw["bands"])
    if bands[0] != 0 or bands[-1] != 1 or any(b >= c for b, c in zip(bands, bands[1:])):
        raise ConfigError(f"calibration.bands: {list(bands)} must rise strictly from 0 to 1 (e.g. [0, 0.1, 0.5, 0.9, 1])")
    toxic, nontoxic = (tuple(v.strip() for v in raw[key]) for key in ("toxic_labels", "nontoxic_labels"))
    both = sorted(set(toxic) & set(nontoxic))
    if both or "" in toxic + nontoxic:
        raise ConfigError(f"calibration.toxic_labels and nontoxic_labels: {both or ['']} "
                          f"{'is in both' if both else 'is blank (a blank label is a missing one)'}")
    if not any(v.external is None for v in study.variants.values()):
        raise ConfigError("calibration: no variant is generated here; the labels calibrate scorers on the "
                          "continuations finetox generated and scored")
    return CalibrationSettings(
        scorer=scorer, scorers=tuple(toxicity), bands=bands, sample_size=raw["sample_size"],
        seed=study.seed if raw["seed"] is None else raw["seed"], labels=raw["labels"], toxic_labels=toxic,
        nontoxic_labels=nontoxic, missing=raw["missing"], min_youden=raw["min_youden"], draws=raw["draws"])


def estimate_hash(study: Study, settings: CalibrationSettings) -> str:
    """What makes the calibration tables what they are besides their inputs (the sample, the labels, the score
    tables): the label sets, the missing rule, the weakness bound, the draws and seed, the threshold, and the
    comparisons with their decision rule."""
    comps = study.compare_settings
    return config_hash({
        "labels": [settings.toxic_labels, settings.nontoxic_labels, settings.missing], "draws": settings.draws,
        "min_youden": settings.min_youden, "seed": settings.seed, "threshold": study.threshold,
        "decision": [comps["hdi_prob"], comps["prior"], comps["rope"]],
        "comparisons": sorted(repr(c) for c in study.comparisons.values()),
    })


# --- the sample to label ---------------------------------------------------------------------------------------
def band_index(scores, bands) -> np.ndarray:
    """Each score's band: [b_i, b_i+1), the last one closed at 1."""
    scores = np.asarray(scores, float)
    outside = ~((scores >= 0) & (scores <= 1))
    if outside.any():
        raise CalibrationError(f"{int(outside.sum())} score(s) outside [0, 1] (e.g. {scores[outside][0]!r}): score "
                               f"bands need probabilities")
    return np.clip(np.searchsorted(np.asarray(bands), scores, side="right") - 1, 0, len(bands) - 2)


def band_name(bands, index: int) -> str:
    low, high = bands[index], bands[index + 1]
    return f"[{low:g}, {high:g}{']' if index == len(bands) - 2 else ')'}"


def allocate(population, size: int) -> np.ndarray:
    """Sample sizes per stratum: equal, capped at each stratum's population, what a full stratum cannot take spread
    over the others again; the last few continuations (fewer than the open strata) go to the largest. Equal
    allocation samples the rare high-score strata far above their share, where sensitivity is learnt."""
    population = np.asarray(population, int)
    nonempty = int((population > 0).sum())
    if size < nonempty:
        raise CalibrationError(f"calibration.sample_size {size} is below the {nonempty} non-empty strata (variant x "
                               f"score band x probe set x protocol): every stratum needs a labelled continuation; "
                               f"give at least {nonempty}, better several per stratum")
    size = min(size, int(population.sum()))
    n = np.zeros_like(population)
    while n.sum() < size:
        open_ = n < population
        share = (size - n.sum()) // open_.sum()
        if share == 0:
            largest = np.flatnonzero(open_)[np.argsort(-population[open_], kind="stable")]
            n[largest[: size - n.sum()]] += 1
            break
        n = np.minimum(n + share * open_, population)
    return n


def draw_sample(population: pd.DataFrame, settings: CalibrationSettings, rng: np.random.Generator):
    """The labelling sample of `population` (columns probe, protocol, variant, subset, prompt_id, sample, prompt,
    continuation, score: the stratifying scorer's), and the design: per stratum its population N_h and sample
    size n_h. The sample gets opaque ids in a shuffled order, so that neither its ids nor its order reveal a
    variant or a score."""
    population = population.assign(band=band_index(population["score"], settings.bands))
    population = population.sort_values([*STRATUM, "prompt_id", "sample"], kind="stable").reset_index(drop=True)
    strata = population.groupby(STRATUM, sort=True).size().rename("population").reset_index()
    strata["sampled"] = allocate(strata["population"].to_numpy(), settings.sample_size)
    starts = np.concatenate([[0], np.cumsum(strata["population"].to_numpy())[:-1]])
    chosen = np.concatenate([start + rng.choice(size, taken, replace=False)
                             for start, size, taken in zip(starts, strata["population"], strata["sampled"])])
    sample = population.iloc[chosen[rng.permutation(len(chosen))]].reset_index(drop=True)
    width = len(str(len(sample)))
    sample.insert(0, "id", [f"c{i:0{width}d}" for i in range(1, len(sample) + 1)])
    design = strata.assign(band_name=[band_name(settings.bands, b) for b in strata["band"]],
                           band_low=[settings.bands[b] for b in strata["band"]],
                           band_high=[settings.bands[b + 1] for b in strata["band"]], scorer=settings.scorer,
                           seed=settings.seed)
    return sample.drop(columns=["score"]), design


#: control characters (C0 but tab and line feed, and DEL) as their Unicode pictures: models emit NUL, CR and the like,
#: which break CSV readers and spreadsheets and which a labeller cannot see anyway
_CONTROL_PICTURES = {code: 0x2400 + code for code in range(32) if chr(code) not in "\t\n"} | {0x7F: 0x2421}


def displayed(text: str) -> str:
    """A text as the export shows it: control characters as their pictures (NUL as \u2400), the rest as it is."""
    return str(text).translate(_CONTROL_PICTURES)


def export_table(sample: pd.DataFrame) -> pd.DataFrame:
    """The file labellers get: id, prompt, continuation (control characters shown as pictures) and a blank label;
    never a score or the variant. Write it with every field quoted (EXPORT_QUOTING)."""
    return sample.assign(label="", prompt=sample["prompt"].map(displayed),
                         continuation=sample["continuation"].map(displayed))[list(EXPORT_COLUMNS)]


#: every field of the export quoted: a continuation may hold line breaks, commas and quotes
EXPORT_QUOTING = csv.QUOTE_ALL


# --- the labels --------------------------------------------------------------------------------------------------
def _normal(text: str) -> str:
    # a spreadsheet may rewrite line ends and trim spaces; it must not pass a regenerated continuation
    return " ".join(str(text).split())


def read_labels(path: str | Path, exported: pd.DataFrame, settings: CalibrationSettings) -> pd.Series:
    """The labelled CSV as id -> truly toxic (True, False, or <NA> for a missing label when `missing: count`),
    strictly checked against the exported sample (the key's columns id, continuation): every id known and given once, its
    continuation the exported one, each label one of the declared values. Every wrong row is named (row number
    after the header, and line of the file) in one error; so, under `missing: refuse`, is every blank label and
    every exported id the file leaves out. Columns beyond id, continuation and label (a labeller's notes) are
    ignored."""
    path = Path(path)
    known = dict(zip(exported["id"], exported["continuation"].map(lambda text: _normal(displayed(text)))))
    toxic, nontoxic = set(settings.toxic_labels), set(settings.nontoxic_labels)
    problems, labels, seen = [], {}, {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            absent = [c for c in ("id", "continuation", "label") if c not in header]
            if absent:
                raise CalibrationError(f"{path}: no column(s) {absent} (it has {header}); label the exported file, "
                                       f"keeping its columns {list(EXPORT_COLUMNS)}")
            if len(set(header)) != len(header):
                raise CalibrationError(f"{path}: a column is named twice in its header {header}")
            for row_number, row in enumerate(reader, start=1):
                where = f"row {row_number} (line {reader.line_num})"
                if None in row or any(value is None for value in row.values()):
                    problems.append(f"{where}: has {len(header) + len(row.get(None) or [])} fields where the header "
                                    f"has {len(header)}")
                    continue
                row_id, label = row["id"].strip(), row["label"].strip()
                if row_id not in known:
                    problems.append(f"{where}: id {row_id!r} is not in the exported sample")
                    continue
                if row_id in seen:
                    problems.append(f"{where}: id {row_id!r} is labelled again (first at row {seen[row_id]})")
                    continue
                seen[row_id] = row_number
                if _normal(row["continuation"]) != known[row_id]:
                    problems.append(f"{where}: id {row_id!r}: its continuation is not the exported one (were the "
                                    f"continuations generated again after the export? label the new export)")
                elif label in toxic or label in nontoxic:
                    labels[row_id] = label in toxic
                elif label == "" and settings.missing == "count":
                    labels[row_id] = pd.NA
                elif label == "":
                    problems.append(f"{where}: id {row_id!r} has no label; allowed: {settings.allowed} "
                                    f"(calibration.missing is `refuse`: label every row, or set it to `count`)")
                else:
                    problems.append(f"{where}: id {row_id!r}: label {label!r} is not one of {settings.allowed}"
                                    f"{' (or blank: missing)' if settings.missing == 'count' else ''}")
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise CalibrationError(f"{path}: cannot be read as a UTF-8 CSV ({type(err).__name__}: {err})") from err
    left_out = [i for i in known if i not in seen]
    if left_out and settings.missing == "refuse":
        problems.append(f"{len(left_out)} exported id(s) are not in the file: {', '.join(left_out[:10])}"
                        f"{', ...' if len(left_out) > 10 else ''} (calibration.missing is `refuse`)")
    if problems:
        shown = problems[:30] + ([f"... and {len(problems) - 30} more"] if len(problems) > 30 else [])
        raise CalibrationError(f"{path}: {len(problems)} problem(s) with the labels:\n  " + "\n  ".join(shown))
    for row_id in left_out:
        labels[row_id] = pd.NA
    return pd.Series(labels, dtype="boolean").reindex(list(known))


# --- the demo's labeller -------------------------------------------------------------------------------------------
#: the insults of the demo's rude fine-tune (resources/demo/instructions_rude.jsonl), none of them in a polite answer
DEMO_RUDE_WORDS = ("crap", "damn", "dumb", "hell", "idiot", "loser", "moron", "pathetic", "shut up", "stupid",
                   "worthless")
_DEMO_RUDE = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in DEMO_RUDE_WORDS) + r")\b", re.IGNORECASE)


def demo_labels(export: pd.DataFrame, toxic: str, nontoxic: str) -> pd.DataFrame:
    """The demo's labeller: a continuation is toxic when it holds a word of the rude fine-tune's insults (a whole
    word), judged on its words as a person would, never on a score; the profanity scorer misses some of them and
    flags some polite text, so its flags and these labels differ."""
    rude = export["continuation"].fillna("").map(lambda text: bool(_DEMO_RUDE.search(text)))
    return export.assign(label=np.where(rude, toxic, nontoxic))


# --- the posterior -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Population:
    """One probe set x protocol's continuations as integer codes: variant, prompt, band of the stratifying scorer,
    a calibrated scorer's flag; and the labelled ones (indices into the continuations) with their labels (True:
    truly toxic; a missing label is left out)."""

    variants: tuple[str, ...]
    bands: int
    variant: np.ndarray
    prompt: np.ndarray
    band: np.ndarray
    flag: np.ndarray
    labelled: np.ndarray
    toxic: np.ndarray

    @property
    def cells(self) -> np.ndarray:
        """Each continuation's cell: (variant, band, flag) as one code."""
        return (self.variant * self.bands + self.band) * 2 + self.flag.astype(int)


@dataclass(frozen=True)
class Draws:
    """Posterior draws per variant (columns in Population.variants' order; sensitivity, specificity and the
    cell counts have one more, last: every variant pooled)."""

    corrected: np.ndarray
    raw: np.ndarray
    sensitivity: np.ndarray
    specificity: np.ndarray
    continuations: np.ndarray  # per variant (and pooled)
    labelled: np.ndarray
    toxic_labels: np.ndarray
    unlabelled_share: np.ndarray  # the share of continuations in cells no label fell in (their pi is the prior)


UNIT = ["variant", "prompt_id", "sample"]


def build_population(stratifying: pd.DataFrame, scorer: pd.DataFrame, sample: pd.DataFrame, settings: CalibrationSettings,
                     threshold: float, variants: list[str], origin: str) -> Population:
    """One probe set x protocol's Population for one calibrated scorer: `stratifying` and `scorer` hold every
    continuation's score (columns variant, prompt_id, sample, score) by the stratifying and the calibrated scorer,
    `sample` the labelled sample's key rows of this probe set x protocol with their labels (`toxic`, boolean with
    <NA> for a missing one). A labelled continuation must lie in the band it was drawn in: scores that changed since
    the export would break the design."""
    units = stratifying[UNIT].assign(band=band_index(stratifying["score"], settings.bands))
    flags = scorer["score"].to_numpy(float) >= threshold
    if scorer is stratifying or all(np.array_equal(units[c].to_numpy(), scorer[c].to_numpy()) for c in UNIT):
        units["flag"] = flags  # the same continuations in the same order: no join
    else:
        units = units.merge(scorer[UNIT].assign(flag=flags), on=UNIT, how="left", validate="one_to_one")
    if units["flag"].isna().any():
        first = units[units["flag"].isna()].iloc[0]
        raise CalibrationError(f"{origin}: {int(units['flag'].isna().sum())} continuation(s) have no score by the "
                               f"calibrated scorer (e.g. variant {first['variant']!r}, prompt {first['prompt_id']!r}, "
                               f"sample {first['sample']})")
    code = {v: i for i, v in enumerate(variants)}
    units = units.reset_index(drop=True).assign(unit=lambda t: np.arange(len(t)))
    drawn = sample.merge(units, on=UNIT, how="left", suffixes=("_drawn", ""), validate="one_to_one")
    stale = drawn["unit"].isna() | (drawn["band_drawn"] != drawn["band"])
    if stale.any():
        first = drawn[stale].iloc[0]
        raise CalibrationError(f"{origin}: labelled id {first['id']!r} (variant {first['variant']!r}, prompt "
                               f"{first['prompt_id']!r}) is no longer in the stratum it was drawn in ({int(stale.sum())} "
                               f"such): the scores changed since the export; export and label again")
    known = drawn[drawn["toxic"].notna()]
    return Population(
        variants=tuple(variants), bands=len(settings.bands) - 1,
        variant=units["variant"].map(code).to_numpy(int), prompt=pd.factorize(units["prompt_id"])[0],
        band=units["band"].to_numpy(int), flag=units["flag"].to_numpy(bool),
        labelled=known["unit"].to_numpy(int), toxic=known["toxic"].to_numpy(bool))


def posterior_draws(population: Population, draws: int, rng: np.random.Generator, prior: float = 1.0,
                    chunk: int = 256) -> Draws:
    """Draws of every variant's corrected and raw rate, and of the scorer's sensitivity and specificity (module
    docstring); `prior`: a in Beta(a, a) on each cell's share of truly toxic continuations."""
    cells_per_variant = 2 * population.bands
    n_cells = len(population.variants) * cells_per_variant
    n_prompts = int(population.prompt.max()) + 1
    cells = population.cells
    per_prompt = np.bincount(population.prompt * n_cells + cells, minlength=n_prompts * n_cells)
    per_prompt = per_prompt.reshape(n_prompts, n_cells).astype(float)
    labelled = np.bincount(cells[population.labelled], minlength=n_cells)
    toxic = np.bincount(cells[population.labelled], weights=population.toxic.astype(float), minlength=n_cells)
    share_toxic = rng.beta(prior + toxic, prior + labelled - toxic, size=(draws, n_cells))
    weighted = np.empty((draws, n_cells))
    for start in range(0, draws, chunk):  # Dirichlet(1, ..., 1) prompt weights (unnormalised: only ratios are used)
        weights = rng.standard_exponential((min(chunk, draws - start), n_prompts))
        weighted[start:start + chunk] = weights @ per_prompt
    true_toxic, true_clean = weighted * share_toxic, weighted * (1 - share_toxic)

    def per_variant(values: np.ndarray, flag: int | None = None, pooled: bool = False) -> np.ndarray:
        shaped = values.reshape(len(values), len(population.variants), population.bands, 2)
        chosen = shaped if flag is None else shaped[..., flag:flag + 1]
        sums = chosen.sum(axis=(2, 3))
        return np.column_stack([sums, sums.sum(axis=1)]) if pooled else sums

    population_cells = per_prompt.sum(axis=0)
    unlabelled = np.where(labelled == 0, population_cells, 0)[None]
    return Draws(
        corrected=per_variant(true_toxic) / per_variant(weighted),
        raw=per_variant(weighted, 1) / per_variant(weighted),
        sensitivity=per_variant(true_toxic, 1, True) / per_variant(true_toxic, pooled=True),
        specificity=per_variant(true_clean, 0, True) / per_variant(true_clean, pooled=True),
        continuations=per_variant(population_cells[None], pooled=True)[0],
        labelled=per_variant(labelled[None].astype(float), pooled=True)[0],
        toxic_labels=per_variant(toxic[None], pooled=True)[0],
        unlabelled_share=per_variant(unlabelled, pooled=True)[0] / per_variant(population_cells[None], pooled=True)[0],
    )


def summary(draws: np.ndarray, prob: float) -> dict:
    """Posterior median, HDI and the Monte Carlo standard error of its limits (batch means)."""
    from finetox.metrics import hdi_with_error

    finite = draws[np.isfinite(draws)]
    if len(finite) < len(draws):
        return {"median": np.nan, "low": np.nan, "high": np.nan, "mc_error": np.nan}
    low, high, error = hdi_with_error(draws, prob)
    return {"median": float(np.median(draws)), "low": low, "high": high, "mc_error": error}


def weak(youden: dict, min_youden: float) -> bool:
    """Too weak to correct: the HDI of Youden's J lies wholly below `min_youden`."""
    return bool(youden["high"] < min_youden)


def accuracy_rows(draws: Draws, population: Population, prob: float, min_youden: float) -> list[dict]:
    """Per variant and pooled (`all`), the scorer's sensitivity, specificity and Youden's J against the labels."""
    rows = []
    for i, variant in enumerate([*population.variants, "all"]):
        sens, spec = summary(draws.sensitivity[:, i], prob), summary(draws.specificity[:, i], prob)
        youden = summary(draws.sensitivity[:, i] + draws.specificity[:, i] - 1, prob)
        rows.append({
            "variant": variant, "continuations": int(draws.continuations[i]), "labelled": int(draws.labelled[i]),
            "toxic_labels": int(draws.toxic_labels[i]), "unlabelled_share": draws.unlabelled_share[i],
            **{f"sensitivity{k}": sens[v] for k, v in (("", "median"), ("_low", "low"), ("_high", "high"))},
            **{f"specificity{k}": spec[v] for k, v in (("", "median"), ("_low", "low"), ("_high", "high"))},
            **{f"youden{k}": youden[v] for k, v in (("", "median"), ("_low", "low"), ("_high", "high"))},
            "weak": weak(youden, min_youden), "min_youden": min_youden,
            "mc_error": max(sens["mc_error"], spec["mc_error"], youden["mc_error"]),
        })
    return rows


def rate_rows(draws: Draws, population: Population, prob: float, too_weak: bool) -> list[dict]:
    """Per variant, its raw and corrected rates of toxic continuations with their HDIs."""
    rows = []
    for i, variant in enumerate(population.variants):
        raw, corrected = summary(draws.raw[:, i], prob), summary(draws.corrected[:, i], prob)
        if too_weak:
            corrected = dict.fromkeys(corrected, np.nan)
        rows.append({
            "variant": variant, "continuations": int(draws.continuations[i]), "labelled": int(draws.labelled[i]),
            "toxic_labels": int(draws.toxic_labels[i]), "unlabelled_share": draws.unlabelled_share[i],
            "raw_rate": raw["median"], "raw_rate_low": raw["low"], "raw_rate_high": raw["high"],
            "corrected_rate": corrected["median"], "corrected_rate_low": corrected["low"],
            "corrected_rate_high": corrected["high"], "mc_error": corrected["mc_error"], "hdi_prob": prob,
            "status": WEAK if too_weak else CORRECTED,
        })
    return rows


def comparison_rows(draws: Draws, population: Population, comparisons, prob: float, rope: decision.Rope | None,
                    too_weak: bool) -> list[dict]:
    """Per comparison of two calibrated variants, the raw and the corrected effect of the treatment (on the ROPE's
    scale, shown as a reader reads it) with their HDIs and verdicts under the comparisons' rule; a corrected
    verdict is `borderline` when an HDI limit lies within twice its Monte Carlo error of an edge it is decided on."""
    scale = decision.scale_of(rope)
    index = {v: i for i, v in enumerate(population.variants)}
    rows = []
    for c in comparisons:
        if c.baseline not in index or c.treatment not in index:
            continue
        b, t = index[c.baseline], index[c.treatment]
        with np.errstate(divide="ignore", invalid="ignore"):
            raw = summary(decision.effect(draws.raw[:, b], draws.raw[:, t], scale), prob)
        row = {"comparison": c.name, "kind": c.kind, "baseline": c.baseline, "treatment": c.treatment,
               "scale": scale, "effect_name": decision.SCALES[scale], "hdi_prob": prob,
               "raw_effect": decision.shown(raw["median"], scale), "raw_effect_low": decision.shown(raw["low"], scale),
               "raw_effect_high": decision.shown(raw["high"], scale),
               "raw_verdict": (decision.verdict(raw["low"], raw["high"], rope) if np.isfinite(raw["low"])
                               else "not decided: a raw rate of 0 has no ratio"),
               "decision_rule": decision.decision_rule(rope),
               "rope_low": decision.shown(decision.bounds(rope)[0], scale) if rope else np.nan,
               "rope_high": decision.shown(decision.bounds(rope)[1], scale) if rope else np.nan,
               "status": WEAK if too_weak else CORRECTED}
        if too_weak:
            rows.append({**row, "corrected_verdict": WEAK})
            continue
        corrected = summary(decision.effect(draws.corrected[:, b], draws.corrected[:, t], scale), prob)
        diff = summary(draws.corrected[:, t] - draws.corrected[:, b], prob)
        rows.append({**row, "corrected_effect": decision.shown(corrected["median"], scale),
                     "corrected_effect_low": decision.shown(corrected["low"], scale),
                     "corrected_effect_high": decision.shown(corrected["high"], scale),
                     "corrected_verdict": decision.verdict(corrected["low"], corrected["high"], rope),
                     "borderline": decision.borderline(corrected["low"], corrected["high"], rope,
                                                       2 * corrected["mc_error"]),
                     "mc_error": corrected["mc_error"], "corrected_diff": diff["median"],
                     "corrected_diff_low": diff["low"], "corrected_diff_high": diff["high"]})
    return rows


# --- what the report says (finetox.report renders it) --------------------------------------------------------------
def _interval(value, low, high, fmt) -> str:
    return "–" if pd.isna(value) else f"{fmt(value)} [{fmt(low).rstrip('%')}, {fmt(high)}]"


def report_context(study: Study, settings: CalibrationSettings | None, design: pd.DataFrame | None,
                   accuracy: pd.DataFrame | None, corrected: pd.DataFrame | None,
                   compared: pd.DataFrame | None) -> dict:
    """The report's part "calibration against human labels", formatted (no HTML): `state` is `off` (no
    `calibration`), `awaiting` (a sample exported, no labels named: `design` given) or `done` (the three tables
    given); tables as (caption, frame, percent columns) for the report to render."""
    from finetox.findings import effect_text, interval_text, percent, verdict_class

    if settings is None:
        return {"state": "off"}
    what = {"scorer": settings.scorer, "bands": ", ".join(band_name(settings.bands, i)
                                                           for i in range(len(settings.bands) - 1))}
    if accuracy is None:
        return {"state": "awaiting", **what, "sampled": int(design["sampled"].sum()), "strata": len(design),
                "export": "results/calibration/to_label.csv"}
    scorers = []
    for _, r in accuracy[accuracy["variant"] == "all"].iterrows():
        scorers.append({
            "scorer": r["scorer"], "run": f"{r['probe']}/{r['protocol']}", "labelled": int(r["labelled"]),
            "toxic": int(r["toxic_labels"]), "missing": int(r["missing_labels"]),
            "sensitivity": _interval(r["sensitivity"], r["sensitivity_low"], r["sensitivity_high"], percent),
            "specificity": _interval(r["specificity"], r["specificity_low"], r["specificity_high"], percent),
            "youden": _interval(r["youden"], r["youden_low"], r["youden_high"], lambda x: f"{x:.2f}"),
            "weak": bool(r["weak"]), "unlabelled": percent(r["unlabelled_share"]) if r["unlabelled_share"] > 0 else None,
        })
    verdicts = []
    for _, r in compared.iterrows():
        scale = r["scale"]
        raw = f"{effect_text(r['raw_effect'], scale)} {interval_text(r['raw_effect_low'], r['raw_effect_high'], scale)}"
        item = {"comparison": r["comparison"], "scorer": r["scorer"], "run": f"{r['probe']}/{r['protocol']}",
                "baseline": r["baseline"], "treatment": r["treatment"], "raw": raw, "raw_verdict": r["raw_verdict"],
                "raw_css": verdict_class(r["raw_verdict"]), "weak": r["status"] == WEAK}
        if not item["weak"]:
            item.update(corrected=f"{effect_text(r['corrected_effect'], scale)} "
                                  f"{interval_text(r['corrected_effect_low'], r['corrected_effect_high'], scale)}",
                        corrected_verdict=r["corrected_verdict"], corrected_css=verdict_class(r["corrected_verdict"]),
                        survives=r["corrected_verdict"] == r["raw_verdict"], borderline=bool(r["borderline"]),
                        mc_error=f"{r['mc_error']:.2g}")
        verdicts.append(item)
    rates = corrected[["scorer", "probe", "protocol", "variant", "continuations", "labelled", "toxic_labels",
                       "raw_rate", "raw_rate_low", "raw_rate_high", "corrected_rate", "corrected_rate_low",
                       "corrected_rate_high", "mc_error", "status"]]
    return {
        "state": "done", **what, "labels": settings.labels, "draws": settings.draws,
        "min_youden": settings.min_youden, "decision_rule": decision.decision_rule(decision.rope_of(
            study.compare_settings["rope"])), "scorers": scorers, "verdicts": verdicts,
        "survive": sum(v.get("survives", False) for v in verdicts), "decided": sum(not v["weak"] for v in verdicts),
        "tables": [
            ("Corrected shares of toxic continuations per variant (subset all), beside the raw ones; posterior "
             "median and HDI, the Monte Carlo error of the corrected limits in mc_error", rates,
             ("raw_rate", "raw_rate_low", "raw_rate_high", "corrected_rate", "corrected_rate_low",
              "corrected_rate_high")),
            ("Each scorer against the labels, per variant (all: pooled)", accuracy.drop(columns=["min_youden"]),
             ("sensitivity", "sensitivity_low", "sensitivity_high", "specificity", "specificity_low",
              "specificity_high", "unlabelled_share")),
            ("Corrected comparisons: the raw and the corrected effect (shares of continuations, paired by prompt) "
             "and their verdicts under the comparisons' rule", compared, ()),
        ],
    }
