"""The guard lever: a variant whose answers are chosen, per requested sample, among candidates its source variant
generated, by a scorer (a guard: lowest harm; or a reward model as reranker: highest reward), with a stated
fallback when no candidate is safe enough."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import yaml

from finetox.errors import ConfigError

#: the variant block's config key (variants.<name>.guard), the role its variants play, and the comparison kind that
#: asks what the guard did
KEY = "guard"
ROLE = "guarded"
COMPARISON_KIND = "source_vs_guarded"
COMPARISON_TITLE = "Guards at generation: a variant's own answers to those its guard kept"
#: the finish_reason of a filtered sample's fixed refusal
FILTERED = "filtered"


#: the block's JSON Schema (finetox.schema adds it to the variants')
SCHEMA = yaml.safe_load("""
type: object
additionalProperties: false
required: [source, scorer]
description: >
  instead of `model`: a guard (or reranker) at generation. The source variant generates
  `candidates` answers per requested sample (the first is the source's own), `scorer` scores
  them with the prompt, and one is kept per sample (rule select, no engine); compared with its
  source (comparison kind source_vs_guarded)
properties:
  source: {type: string, description: "the generated variant whose answers are guarded (same family)"}
  scorer:
    type: string
    description: >
      the scorer that judges the candidates: a toxicity scorer (lower is safer) or a reward-model
      (higher is better: its harm is 1 - reward). Not a run scorer unless evaluate_with_selector
  candidates: {type: integer, minimum: 1, default: 4, description: "answers generated per requested sample (1: the source's own answer only)"}
  select:
    type: string
    enum: [lowest, first_below]
    default: lowest
    description: "lowest: the candidate of lowest harm; first_below: the first candidate whose harm is below `threshold`"
  threshold: {type: number, minimum: 0, maximum: 1, default: 0.5, description: "harm at or above which a candidate is unsafe; a sample with no candidate below it is filtered"}
  fallback:
    type: string
    enum: [refusal, least_harmful]
    default: refusal
    description: "what a filtered sample answers: the `refusal` text (finish_reason `filtered`), or its least harmful candidate"
  refusal: {type: string, default: "I'm sorry, but I can't help with that.", description: "the fixed answer of a filtered sample (fallback refusal)"}
  evaluate_with_selector:
    type: boolean
    default: false
    description: >
      allow `scorer` in run.scorers: the guarded variant is then evaluated by the scorer that chose its
      answers (circular; the report marks those verdicts). Refused by default
""")


@dataclass(frozen=True)
class GuardSettings:
    """A variant's `guard` block (config key variants.<name>.guard)."""

    source: str
    scorer: str
    candidates: int
    select: str
    threshold: float
    fallback: str
    refusal: str
    evaluate_with_selector: bool


#: the block as a variant holds it (finetox.levers)
Settings = GuardSettings


def settings(block: dict) -> GuardSettings:
    return GuardSettings(**block)


def scorers(guard: GuardSettings) -> tuple[str, ...]:
    """The scorer the guard loads: its selector."""
    return (guard.scorer,)


def describe(guard: GuardSettings) -> str:
    return (f"{guard.source}'s answers guarded by {guard.scorer}: the "
            f"{'least harmful' if guard.select == 'lowest' else 'first safe'} of {guard.candidates} candidates per "
            f"sample")


def check(name: str, guard: GuardSettings, variants: dict, scorers: dict, run_scorers) -> None:
    """The guard's source is a variant of its family that finetox generates, its scorer judges harm or reward,
    and it does not evaluate the answers it chose unless the config says so."""
    where = f"variants[{name!r}].guard"
    if guard.source not in variants:
        raise ConfigError(f"{where}.source: unknown variant {guard.source!r}; declared variants: {sorted(variants)}")
    source = variants[guard.source]
    if source.external or source.guard:
        what = "is scored elsewhere (no model to ask for candidates)" if source.external else "is itself guarded"
        raise ConfigError(f"{where}.source: {guard.source!r} {what}; a guard selects among the answers of a variant "
                          f"finetox generates")
    if source.family != variants[name].family:
        raise ConfigError(f"{where}.source: {guard.source!r} is in family {source.family!r}, this variant in "
                          f"{variants[name].family!r}; a guarded variant belongs to its source's family")
    if guard.scorer not in scorers:
        raise ConfigError(f"{where}.scorer: unknown scorer {guard.scorer!r}; declared scorers: {sorted(scorers)}")
    measures = scorers[guard.scorer].measures
    if measures not in ("toxicity", "reward"):
        raise ConfigError(f"{where}.scorer: {guard.scorer!r} measures {measures}; a guard selects by harm (a toxicity "
                          f"scorer) or by reward (a reward-model)")
    if guard.scorer in run_scorers and not guard.evaluate_with_selector:
        # the selector's own errors would be invisible: it kept exactly the answers it scores low
        raise ConfigError(f"{where}.scorer: {guard.scorer!r} chose this variant's answers and is also in run.scorers, "
                          f"so it would grade its own choices (circular evaluation); evaluate with another scorer, "
                          f"or set {where}.evaluate_with_selector: true and read those verdicts as marked")


def comparisons(variants: dict) -> list[tuple[str, str, str]]:
    """(name, baseline, treatment) of every guarded variant against its source."""
    return [(f"{v.guard.source}_vs_{v.name}", v.guard.source, v.name) for v in variants.values() if v.guard]


def candidate_seed(seed: int, variant: str) -> int:
    """The sampling seed of a guarded variant's extra candidates: not its source's (whose answers are candidate 0),
    and a function of the variant's name, so two guards of one source draw different candidates."""
    return int.from_bytes(hashlib.sha256(f"{seed}:candidates:{variant}".encode()).digest()[:4], "big") % (2**31)


def extra_candidates(guard: GuardSettings, samples: int) -> int:
    """How many continuations per prompt the generation stage adds for the guard: (candidates - 1) per sample."""
    return (guard.candidates - 1) * samples


def candidates_table(source: pd.DataFrame, extra: pd.DataFrame | None, guard: GuardSettings) -> pd.DataFrame:
    """Every candidate of every (prompt, sample), numbered: candidate 0 is the source's own answer for that sample,
    candidates 1 .. N-1 are the extra continuations (sample s takes extra samples s*(N-1) .. (s+1)*(N-1)-1)."""
    per_sample = guard.candidates - 1
    first = source.assign(candidate=0)
    if not per_sample:
        return first
    samples = int(source["samples"].iloc[0])
    expected = len(source) * per_sample
    if extra is None or len(extra) != expected:
        found = 0 if extra is None else len(extra)
        raise ValueError(f"the guard needs {expected} extra candidates ({per_sample} per sample of {len(source)}), "
                         f"the candidates table holds {found}")
    extra = extra.assign(candidate=extra["sample"] % per_sample + 1, sample=extra["sample"] // per_sample,
                         samples=samples)
    missing = set(zip(extra["prompt_id"], extra["sample"])) ^ set(zip(source["prompt_id"], source["sample"]))
    if missing:
        raise ValueError(f"candidates and source answers differ in (prompt, sample) {sorted(missing)[:3]}")
    return pd.concat([first, extra], ignore_index=True)


def harm(scores: pd.Series, measures: str) -> pd.Series:
    """What the guard minimises: a toxicity score itself; 1 - reward for a reward model (higher reward, less harm)."""
    return 1.0 - scores if measures == "reward" else scores


def select(candidates: pd.DataFrame, guard: GuardSettings, refusal_tokens: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One kept answer per (prompt, sample), and the record of the choice.

    `candidates` holds `candidate` and `harm` beside the generation columns. Rule `lowest` keeps the candidate of
    lowest harm (the first of equals), `first_below` the first whose harm is below the threshold. A sample whose
    candidates all reach the threshold is filtered: it answers the fixed refusal (finish_reason `filtered`,
    `refusal_tokens` long) or, with fallback least_harmful, its candidate of lowest harm.
    """
    ordered = candidates.sort_values(["prompt_id", "sample", "candidate"], kind="stable")
    keys = ["prompt_id", "sample"]
    groups = ordered.groupby(keys, sort=False)
    least = ordered.loc[groups["harm"].idxmin()]  # idxmin: the first row of the lowest harm, in candidate order
    below = ordered[ordered["harm"] < guard.threshold]
    first_below = below.drop_duplicates(keys)
    chosen = (least if guard.select == "lowest" else first_below).set_index(keys)
    least = least.set_index(keys)
    first = ordered[ordered["candidate"] == 0].set_index(keys)
    filtered = ~first.index.isin(first_below.set_index(keys).index)
    # a filtered sample falls back on its least harmful candidate (replaced below by the refusal, if that is it)
    kept = pd.concat([chosen.loc[first.index[~filtered]], least.loc[first.index[filtered]]]).reindex(first.index)
    record = pd.DataFrame({
        "subset": first["subset"],
        "candidates": groups.size().reindex(first.index).to_numpy(),
        "kept": np.where(filtered & (guard.fallback == "refusal"), -1, kept["candidate"]).astype("int64"),
        "harm_first": first["harm"].to_numpy(float),
        "harm_least": least.loc[first.index, "harm"].to_numpy(float),
        "filtered": filtered,
    }, index=first.index)
    record["replaced"] = record["kept"] != 0
    answers = kept.copy()
    if guard.fallback == "refusal":
        answers.loc[filtered, "continuation"] = guard.refusal
        answers.loc[filtered, "continuation_tokens"] = refusal_tokens
        answers.loc[filtered, "finish_reason"] = FILTERED
    answers = answers.drop(columns=["candidate", "harm"]).reset_index()
    return answers, record.reset_index()


def rates(record: pd.DataFrame) -> dict:
    """How often the guard acted: samples filtered (no candidate below the threshold) and replaced (the kept answer
    is not the source's own)."""
    n = len(record)
    filtered, replaced = int(record["filtered"].sum()), int(record["replaced"].sum())
    return {"n": n, "filtered": filtered, "filtered_rate": filtered / n if n else float("nan"),
            "replaced": replaced, "replaced_rate": replaced / n if n else float("nan")}
