"""Turn a finetox config, validated and filled in by finetox.schema, into typed study objects, cross-checked, from
which the DAG is derived (its comparisons by finetox.design)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from finetox.decision import rope_of
from finetox.design import TRAINED_ROLES, Comparison, derive_comparisons
from finetox.errors import ConfigError  # noqa: F401  (re-exported: callers catch finetox.config.ConfigError)
from finetox.languages import covers, trained_languages
from finetox.levers import LEVERS, lever_of
from finetox.levers import guard as guard_lever
from finetox.schema import validate

#: a probe set's language when it declares none: every probe set finetox shipped before languages could be declared
#: (RealToxicityPrompts, XSTest, the demo's) is English, so a config that says nothing means what it meant
DEFAULT_LANGUAGE = "en"
#: the key that declares a probe set's language and a scorer's languages: declarations that change no output, so
#: that the rerun digests (Study.digest, Study.selection_hash) leave them out
LANGUAGE_KEYS = {"probes": "language", "scorers": "languages"}
#: keys of a block that change no output its digest guards: the language declarations, the variants a probe set is
#: asked of (which jobs run, not what its probe table holds), and how a produced prompt set is made (rule mistakes'
#: trigger, Study.mistakes_hash; its probes job reads the file that rule writes)
UNDIGESTED = {"probes": (LANGUAGE_KEYS["probes"], "variants", "produced"),
              "scorers": (LANGUAGE_KEYS["scorers"], "probes")}


# --- typed study objects -------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSource:
    """A checkpoint: a local directory or a Hub id."""

    name: str
    path: str | None
    hub: str | None
    revision: str | None
    trust_remote_code: bool
    dtype: str
    max_model_len: int | None
    tensor_parallel_size: int | None = None

    @property
    def location(self) -> str:
        """What `from_pretrained` and vLLM take: the local path or the Hub id."""
        return self.path or self.hub


@dataclass(frozen=True)
class Produced:
    """A table the workflow makes from a variant's answers to a training prompt set under a protocol: those answers
    (a dataset), or, given a `scorer`, the prompts on which they erred (a probe set: rule mistakes)."""

    variant: str
    probe: str
    protocol: str
    #: a prompt set's judge: an answer errs when this scorer scores it at or above `threshold`, and a prompt is kept
    #: when at least `min_samples` of its answers erred
    scorer: str | None = None
    threshold: float | None = None
    min_samples: int | None = None
    #: the judge may also be a run scorer (the verdicts of the variants trained on these prompts are then marked)
    evaluate_with_selector: bool = False

    @property
    def prompts(self) -> bool:
        """Whether it is a prompt set (the prompts a variant erred on) rather than answers."""
        return self.scorer is not None

    @property
    def cell(self) -> tuple[str, str, str]:
        """The (probe, protocol, variant) whose answers it is made of."""
        return self.probe, self.protocol, self.variant


@dataclass(frozen=True)
class TableSource:
    """A table on disk or a Hub dataset, with a column mapping."""

    name: str
    path: str | None
    hub: str | None
    files: tuple[str, ...]
    revision: str | None
    columns: dict[str, str]
    limit: int | None
    #: how a fine-tuning dataset's rows are read: instructions, or one of the preference formats
    format: str = "instructions"
    #: a table the workflow makes (`path` is then where its rule writes it)
    produced: Produced | None = None


@dataclass(frozen=True)
class Filter:
    column: str
    op: str
    value: Any


@dataclass(frozen=True)
class ProbeSet:
    source: TableSource
    subsets: dict[str, tuple[Filter, ...]]
    sample_per_subset: int | None
    #: the language its prompts are written in (a BCP-47 tag such as en, de, zh), checked against its scorers'
    language: str = DEFAULT_LANGUAGE
    #: a selective run: the generated variants it is asked of (None: every one)
    variants: tuple[str, ...] | None = None

    @property
    def name(self) -> str:
        return self.source.name


@dataclass(frozen=True)
class LoraSettings:
    r: int
    alpha: float
    dropout: float
    bias: str
    target_modules: tuple[str, ...]


@dataclass(frozen=True)
class TrainingSettings:
    epochs: float
    max_steps: int | None
    learning_rate: float
    lr_scheduler: str
    warmup_steps: int
    weight_decay: float
    per_device_batch_size: int
    gradient_accumulation_steps: int
    optimizer: str
    max_seq_length: int
    load_in_4bit: bool
    seed: int


@dataclass(frozen=True)
class DatasetPart:
    """One dataset of a recipe's training data, with the seeded number of its rows used (None: all)."""

    dataset: TableSource
    examples: int | None


@dataclass(frozen=True)
class DPOSettings:
    beta: float
    loss_type: str
    swap_labels: bool


#: the dataset formats that hold preference pairs (finetox.preference's mappers), by config name
PREFERENCE_FORMATS = {"preferences": "columns", "pku-saferlhf": "pku-saferlhf", "hh-rlhf": "hh-rlhf"}


@dataclass(frozen=True)
class Recipe:
    """A LoRA fine-tune: supervised (sft) on one dataset or a mix of them, or preference optimisation (dpo)."""

    name: str
    method: str
    parts: tuple[DatasetPart, ...]
    template: str
    max_examples: int | None
    lora: LoraSettings
    training: TrainingSettings
    dpo: DPOSettings | None = None
    pool_as: str | None = None  # the config's `pool_as`

    @property
    def pool(self) -> str:
        """The pool its fine-tunes join across families (finetox.pooling): `pool_as`, by default its name."""
        return self.pool_as or self.name

    @property
    def datasets(self) -> tuple[TableSource, ...]:
        return tuple(part.dataset for part in self.parts)


@dataclass(frozen=True)
class Protocol:
    name: str
    samples: int
    temperature: float
    top_p: float
    max_new_tokens: int
    prompt_format: str
    seed: int
    system_prompt: str | None = None
    #: a selective run: the generated variants it is asked of (None: every one)
    variants: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ExternalScores:
    """Continuations scored elsewhere, standing in for one probe set x protocol x scorer."""

    source: TableSource
    probe: str
    protocol: str
    scorer: str


@dataclass(frozen=True)
class Variant:
    """One model as it is probed: a checkpoint, optionally with an adapter from a recipe; or a table of
    continuations scored elsewhere (`external`, then `model` is None)."""

    name: str
    family: str
    role: str
    model: ModelSource | None
    recipe: Recipe | None
    seed: int | None
    prompt_format: str | None
    external: ExternalScores | None = None
    #: a sequential recipe: the fine-tuned variant whose merged checkpoint this one trains on and is served from
    start: str | None = None
    #: a lever's settings (finetox.levers), built on its `source` variant; `model` is then the source's
    lever: Any = None

    @property
    def guard(self) -> guard_lever.GuardSettings | None:
        """The guard's settings, when this variant is a guard's (finetox.levers.guard)."""
        return self.lever if isinstance(self.lever, guard_lever.Settings) else None


@dataclass(frozen=True)
class ScorerSpec:
    name: str
    type: str
    options: dict[str, Any]
    #: what the scorer's score measures (toxicity or refusal): the tables and verdicts are worded by it; a
    #: reward model's is `reward`, which no table is worded by (load keeps it out of run.scorers)
    measures: str = "toxicity"
    #: the languages it may score (lower-case tags), declared or known to finetox for its type; None: not restricted
    languages: tuple[str, ...] | None = None
    #: a selective run: the run probe sets it scores (None: every one)
    probes: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Study:
    """Everything a run needs, cross-checked."""

    raw: dict = field(repr=False)
    seed: int
    demo: bool
    models: dict[str, ModelSource]
    recipes: dict[str, Recipe]
    variants: dict[str, Variant]
    probes: dict[str, ProbeSet]
    protocols: dict[str, Protocol]
    scorers: dict[str, ScorerSpec]
    comparisons: dict[str, Comparison]
    run_probes: tuple[str, ...]
    run_protocols: tuple[str, ...]
    run_scorers: tuple[str, ...]

    def training_cells(self) -> list[tuple[str, str, str]]:
        """(probe, protocol, variant) generated only to be trained on: the answers of each produced dataset that a
        recipe uses, for a guarded variant its source's too (its candidate 0), and the answers a produced prompt set
        of theirs was chosen by, in name order."""
        recipes = {v.recipe.name: v.recipe for v in self.variants.values() if v.recipe}.values()
        return sorted({cell for recipe in recipes for source in recipe.datasets for cell in self.produced_from(source)})

    def produced_from(self, source: TableSource) -> set[tuple[str, str, str]]:
        """The (probe, protocol, variant) a produced table is made from: its variant's answers and, for a guarded
        variant, its source's too (its candidate 0); for answers to a produced prompt set, what that set was made
        from too; none for a table that is not produced."""
        if not source.produced:
            return set()
        probe, protocol, variant = source.produced.cell
        guard = self.variants[variant].guard
        cells = {(probe, protocol, variant), *([(probe, protocol, guard.source)] if guard else [])}
        return cells | self.produced_from(self.probes[probe].source)

    def selectors(self, variant: str) -> dict[str, str]:
        """The scorers that chose what a variant answers with, by what they chose: a guard's selector its answers,
        and through its training data (its recipe's and those of the fine-tunes it starts from) the selector of the
        answers it was trained on and the judge of the prompts it was trained on. Such a scorer grading the variant
        grades its own choices (circular)."""
        return {scorer: "chose " + " and ".join(dict.fromkeys(what)) for scorer, what in self._chosen(variant).items()}

    def _chosen(self, variant: str) -> dict[str, list[str]]:
        v = self.variants[variant]
        if v.external:
            return {}
        chosen = self._chosen(v.lever.source) if v.lever else self._chosen(v.start) if v.start else {}
        if v.guard:
            chosen.setdefault(v.guard.scorer, []).append("its answers")
        for source in v.recipe.datasets if v.recipe else ():
            for probe, _, answering in sorted(self.produced_from(source)):
                if made := self.probes[probe].source.produced:
                    chosen.setdefault(made.scorer, []).append("the prompts it was trained on")
                if (guard := self.variants[answering].guard) and answering == source.produced.variant:
                    chosen.setdefault(guard.scorer, []).append("the answers it was trained on")
        return chosen

    def circular(self, variant: str, scorer: str) -> str | None:
        """What a scorer chose of a variant's answers or training data, when it grades that variant (a verdict
        the report marks); None when it chose nothing of it."""
        return self.selectors(variant).get(scorer)

    def asks(self, probe: str, protocol: str, variant: str) -> bool:
        """Whether the run asks a generated variant a run probe set under a run protocol: every one under every one,
        unless the probe set or the protocol names the variants it is asked of (probes.<name>.variants,
        protocols.<name>.variants: selective runs)."""
        return all(chosen is None or variant in chosen
                   for chosen in (self.probes[probe].variants, self.protocols[protocol].variants))

    def scored_by(self, probe: str, scorer: str) -> bool:
        """Whether a run scorer scores a run probe set: every one, unless the scorer names those it scores
        (scorers.<name>.probes, a selective run)."""
        chosen = self.scorers[scorer].probes
        return chosen is None or probe in chosen

    def variant_runs(self, variant: str) -> list[tuple[str, str]]:
        """(probe, protocol) of every run probe set a generated variant is asked x every run protocol, in run order:
        what it answers and each run scorer scores."""
        return [(probe, protocol) for probe in self.run_probes for protocol in self.run_protocols
                if self.asks(probe, protocol, variant)]

    def asked_cells(self) -> list[tuple[str, str, str]]:
        """(probe, protocol, variant) of every generated variant on each run probe set x protocol it is asked, in
        name order: the continuations the run scores."""
        return sorted((probe, protocol, v.name) for v in self.variants.values() if not v.external
                      for probe, protocol in self.variant_runs(v.name))

    def evaluation_cells(self) -> list[tuple[str, str, str]]:
        """(probe, protocol, variant) of every continuation of the run probe sets finetox generates, in name order:
        those the run scores, and a guarded variant's source's on each probe set the guarded variant is asked (its
        candidate 0) where the source itself is not."""
        cells = set(self.asked_cells())
        cells |= {(probe, protocol, v.guard.source) for v in self.variants.values() if v.guard
                  for probe, protocol in self.variant_runs(v.name)}
        return sorted(cells)

    def generation_cells(self, training: bool = False) -> list[tuple[str, str, str]]:
        """The training cells or (training=False) the evaluation cells: what one kind of generation job serves."""
        return self.training_cells() if training else self.evaluation_cells()

    @property
    def training_probes(self) -> tuple[str, ...]:
        """The probe sets generated on only to be trained on (none of them is in run.probes)."""
        return tuple(sorted({probe for probe, _, _ in self.training_cells()}))

    @property
    def generated_probes(self) -> tuple[str, ...]:
        return self.run_probes + self.training_probes

    @property
    def produced_prompts(self) -> tuple[str, ...]:
        """The produced prompt sets the run makes (rule mistakes): those its training cells answer, in name order."""
        return tuple(probe for probe in self.training_probes if self.probes[probe].source.produced)

    def judged_probes(self) -> dict[str, set[str]]:
        """The probe sets each scorer beyond the run's judges, by scorer: a lever's (a guard's selector) every probe
        set its variant answers, and a produced prompt set's judge the probe set it is drawn from."""
        judged: dict[str, set[str]] = {}
        for probe, _, variant in self.evaluation_cells() + self.training_cells():
            if lever := self.variants[variant].lever:
                for scorer in lever_of(lever).scorers(lever):
                    judged.setdefault(scorer, set()).add(probe)
        for name in self.produced_prompts:
            made = self.probes[name].source.produced
            judged.setdefault(made.scorer, set()).add(made.probe)
        return judged

    @property
    def used_scorers(self) -> tuple[str, ...]:
        """The scorers a run loads: its run scorers, the levers' (a guard's selector) and the judges of its produced
        prompt sets."""
        return tuple(dict.fromkeys([*self.run_scorers, *self.judged_probes()]))

    @property
    def generation(self) -> dict:
        return self.raw["generation"]

    @property
    def threshold(self) -> float:
        return self.raw["metrics"]["threshold"]

    @property
    def threshold_grid(self) -> list[float]:
        """The thresholds every toxicity verdict is recomputed at (metrics.threshold_grid), in order."""
        return sorted(float(t) for t in self.raw["metrics"]["threshold_grid"])

    @property
    def toxicity_scorers(self) -> tuple[str, ...]:
        """The run scorers whose score measures toxicity (not refusal): the verdicts the findings headline."""
        return tuple(s for s in self.run_scorers if self.scorers[s].measures == "toxicity")

    @property
    def compare_settings(self) -> dict:
        return self.raw["comparisons"]

    @property
    def capability(self) -> dict | None:
        """The capability proxy's settings (config key `capability`: dataset, examples, template, batch_size, margin,
        replicates), or None when the stage does not run."""
        return self.raw.get("capability")

    @property
    def capability_source(self) -> TableSource | None:
        """The held-out instruction set whose reference answers the capability stage scores."""
        if self.capability is None:
            return None
        name = self.capability["dataset"]
        return _table_source(name, self.raw["datasets"][name])

    #: the capability settings that only the gathered table reads (its verdicts): changing them rescores nothing
    CAPABILITY_DECISION_KEYS = ("margin", "replicates")

    def capability_hash(self, variant: str) -> str:
        """A digest of what makes a variant's reference-answer NLL what it is: its checkpoint, its adapter's
        training (fine-tuned variants), the capability settings that score (not the decision's), their dataset,
        and the NLL's convention (finetox.helpfulness.NLL_CONVENTION: a new one rescores every variant)."""
        from finetox.helpfulness import NLL_CONVENTION

        v = self.variants[variant]
        return config_hash({
            "model": self._checkpoint_settings(variant),
            "adapter": self._training_settings(variant) if v.recipe else None,
            "capability": {k: value for k, value in self.capability.items() if k not in self.CAPABILITY_DECISION_KEYS},
            "dataset": self.raw["datasets"][self.capability["dataset"]],
            "seed": self.seed,
            "nll": NLL_CONVENTION,
        })

    def capability_table_hash(self) -> str:
        """A digest of what makes the gathered capability tables what they are besides their inputs: the
        comparisons (and their HDI probability), the seed of the bootstrap, its replicates and the margin."""
        decision = {k: (self.capability or {}).get(k) for k in self.CAPABILITY_DECISION_KEYS}
        return config_hash({"comparisons": self.comparisons_hash(), "seed": self.seed, **decision})

    @property
    def stereotypes(self) -> dict | None:
        """The stereotype-preference stage's settings (config key `stereotypes`: its pair table, pairs, batch_size,
        replicates), or None when the stage does not run."""
        return self.raw.get("stereotypes")

    @property
    def stereotypes_source(self) -> TableSource | None:
        """The CrowS-Pairs-style table of sentence pairs that every generated variant scores."""
        return None if self.stereotypes is None else _table_source("stereotypes", self.stereotypes)

    #: the stereotype settings that only the gathered tables read: changing them rescores nothing
    STEREOTYPE_TABLE_KEYS = ("replicates",)

    def stereotypes_hash(self, variant: str) -> str:
        """A digest of what makes a variant's sentence log-likelihoods what they are: its checkpoint, its adapter's
        training (fine-tuned variants), the pair table and the settings that score, the seed (of the `pairs`
        sample) and the log-likelihood's convention (finetox.likelihood.LOGLIKELIHOOD_CONVENTION)."""
        from finetox.likelihood import LOGLIKELIHOOD_CONVENTION

        v = self.variants[variant]
        return config_hash({
            "model": self._checkpoint_settings(variant),
            "adapter": self._training_settings(variant) if v.recipe else None,
            "stereotypes": {k: value for k, value in self.stereotypes.items() if k not in self.STEREOTYPE_TABLE_KEYS},
            "seed": self.seed,
            "loglikelihood": LOGLIKELIHOOD_CONVENTION,
        })

    def stereotypes_table_hash(self) -> str:
        """A digest of what makes the gathered stereotype tables what they are besides their inputs: the comparisons
        (their HDI probability, prior and ROPE decide the verdicts), the seed and replicates of the bootstrap."""
        return config_hash({"comparisons": self.comparisons_hash(), "seed": self.seed,
                            **{k: (self.stereotypes or {}).get(k) for k in self.STEREOTYPE_TABLE_KEYS}})

    def resources(self, stage: str, model: str | None = None, attempt: int = 1) -> dict:
        """A stage's job request: the defaults, the config's `resources`, then the model's own. Memory
        and runtime grow with each attempt, so a job retried after running out of either asks for more."""
        defaults = {"threads": 1, "mem_mb": 4000, "runtime": 60, "gpu": 0}
        per_model = self.raw["models"][model]["resources"].get(stage, {}) if model else {}
        request = {**defaults, **self.raw.get("resources", {}).get(stage, {}), **per_model}
        return {**request, "mem_mb": request["mem_mb"] * attempt, "runtime": request["runtime"] * attempt}

    def digest(self, *keys: str) -> str:
        """A key-order-independent digest of one part of the config (rule params that trigger reruns). A probe set's
        or scorer's language declarations and the variants a probe set is asked of are left out (UNDIGESTED): they
        change no output, only what load allows and which jobs run."""
        node = self.raw
        for key in keys:
            node = node[key]
        if len(keys) == 2 and keys[0] in UNDIGESTED:
            node = {k: v for k, v in node.items() if k not in UNDIGESTED[keys[0]]}
        return config_hash(node)

    def comparisons_hash(self) -> str:
        """A digest of the comparison settings that change a fit: a pair's `control` is read by the report
        only, so declaring one reruns no comparison."""
        raw = dict(self.raw["comparisons"])
        raw["pairs"] = [{k: v for k, v in pair.items() if k != "control"} for pair in raw["pairs"]]
        return config_hash(raw)

    # Rerun triggers: each digest holds exactly what can change a stage's output, so that raising a
    # job's memory never retrains, a new sampling seed regenerates without retraining, and engine
    # memory settings leave finished shards alone.
    def training_hash(self, variant: str) -> str:
        """A digest of what makes a variant's adapter what it is: the checkpoint, recipe, data and seed."""
        return config_hash(self._training_settings(variant))

    def checkpoint(self, variant: str) -> ModelSource:
        """The weights a variant loads (and its adapter trains on): its model, or for a sequential recipe the
        merged checkpoint of the variant it starts from (written by the merge rule)."""
        v = self.variants[variant]
        if v.lever:
            return self.checkpoint(v.lever.source)
        if not v.start:
            return v.model
        return replace(v.model, name=f"{v.start}.merged", path=MERGED_CHECKPOINT.format(variant=v.start), hub=None,
                       revision=None)

    def adapter_variant(self, variant: str) -> str | None:
        """The variant whose trained adapter a variant is served with: itself when it has a recipe, a guarded
        variant's source's; None for a checkpoint alone."""
        v = self.variants[variant]
        if v.lever:
            return self.adapter_variant(v.lever.source)
        return variant if v.recipe else None

    def selection_hash(self, variant: str) -> str:
        """A digest of what makes a guarded variant's choice among its candidates what it is: its guard settings
        and the scorer's (the select rule's rerun trigger; the candidates themselves are its inputs)."""
        guard = self.raw["variants"][variant]["guard"]
        scorer = {k: v for k, v in self.raw["scorers"][guard["scorer"]].items() if k not in UNDIGESTED["scorers"]}
        return config_hash({"guard": guard, "scorer": scorer})

    def mistakes_hash(self, probe: str) -> str:
        """A digest of what makes a produced prompt set's choice what it is: its judge's settings, threshold and
        min_samples (the mistakes rule's rerun trigger; the answers judged are its input)."""
        made = {k: v for k, v in self.raw["probes"][probe]["produced"].items() if k != "evaluate_with_selector"}
        scorer = {k: v for k, v in self.raw["scorers"][made["scorer"]].items() if k not in UNDIGESTED["scorers"]}
        return config_hash({"produced": made, "scorer": scorer})

    def _checkpoint_settings(self, variant: str) -> dict:
        v = self.variants[variant]
        return {"merged": self._training_settings(v.start)} if v.start else _checkpoint(self.raw["models"][v.model.name])

    def generation_hash(self, variant: str, protocol: str) -> str:
        """A digest of what makes a variant's continuations under one protocol what they are."""
        v, p = self.variants[variant], self.protocols[protocol]
        if v.guard:  # its extra candidates: its source's sampling, more of it, under the seed its name derives
            return config_hash({"candidates_of": self.generation_hash(v.guard.source, protocol),
                                "candidates": v.guard.candidates, "variant": variant})
        return config_hash({
            "model": self._checkpoint_settings(variant),
            "adapter": self._training_settings(variant) if v.recipe else None,
            "seed": v.seed if v.seed is not None else p.seed,
            "prompt_format": v.prompt_format or p.prompt_format,
            "protocol": {key: value for key, value in self.raw["protocols"][protocol].items()
                         if key not in ("seed", "prompt_format", "variants")},
            "engine": {key: self.generation[key] for key in self._engine_output_keys()},
        })

    def _engine_output_keys(self) -> tuple[str, ...]:
        # vLLM schedules its own batches; transformers pads each batch, which can move a greedy argmax
        return ("backend", "lora", "batch_size") if self.generation["backend"] == "transformers" else ("backend", "lora")

    def _training_settings(self, variant: str) -> dict:
        v = self.variants[variant]
        recipe = self.raw["recipes"][v.recipe.name]
        datasets = self.raw["datasets"]
        return {
            "model": self._checkpoint_settings(variant),
            # (`pool_as` says how the comparisons are pooled, not what is trained: setting it retrains nothing)
            "recipe": {key: value for key, value in recipe.items() if key not in ("training", "pool_as")},
            "training": {**recipe["training"], "seed": v.recipe.training.seed},
            # (a recipe of one dataset keeps the digest it had before mixes existed: no rerun on upgrade)
            "dataset": (datasets[recipe["dataset"]] if "dataset" in recipe
                        else [datasets[part["dataset"]] for part in recipe["mix"]]),
        }


#: where the merge rule writes a fine-tuned variant's checkpoint with its adapter merged in
MERGED_CHECKPOINT = "results/merged/{variant}"


# model settings that say which weights are loaded (the others size the engine and the job)
CHECKPOINT_KEYS = ("path", "hub", "revision", "trust_remote_code", "dtype")


def _checkpoint(model: dict) -> dict:
    return {key: model.get(key) for key in CHECKPOINT_KEYS}


def config_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _require(name: str, table: dict, what: str, where: str) -> None:
    if name not in table:
        allowed = sorted(table) or "none declared"
        raise ConfigError(f"{where}: unknown {what} {name!r}; declared {what}s: {allowed}")


# the effective sample size every sampled posterior must reach (finetox.sampling's gates)
MIN_ESS = 400
# the file types finetox reads tables from (finetox.data.READERS)
TABLE_SUFFIXES = (".csv", ".json", ".jsonl", ".parquet")


def _check_local_table(where: str, source: TableSource) -> None:
    """A local table the run reads must exist and be of a type finetox reads, before any job starts (a table the
    run produces is made by its own job)."""
    if not source.path or source.produced:
        return
    path = Path(source.path)
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise ConfigError(f"{where}.path: {source.path!r} has type {path.suffix!r}; finetox reads {list(TABLE_SUFFIXES)}")
    if not path.is_file():
        raise ConfigError(f"{where}.path: {source.path!r} does not exist (relative paths are read from the "
                          f"working directory, {Path.cwd()})")


#: where a variant's continuations of a probe set under a protocol are written (finetox.paths.Targets)
GENERATIONS = "results/generations/{probe}/{protocol}/{variant}.parquet"


#: where rule mistakes writes a produced prompt set: the prompts a variant erred on (finetox.mistakes)
MISTAKES = "results/mistakes/{probe}.parquet"


def _table_source(name: str, raw: dict) -> TableSource:
    produced = Produced(**raw["produced"]) if raw.get("produced") else None
    if produced:  # made by the run: the file its rule writes
        path = (MISTAKES.format(probe=name) if produced.prompts
                else GENERATIONS.format(probe=produced.probe, protocol=produced.protocol, variant=produced.variant))
    return TableSource(
        name=name,
        path=path if produced else raw.get("path"),
        produced=produced,
        hub=raw.get("hub"),
        files=tuple(raw["files"]),
        revision=raw["revision"],
        columns=dict(raw["columns"]),
        limit=raw["limit"],
        format=raw.get("format", "instructions"),
    )


def _recipe(name: str, r: dict, datasets: dict[str, TableSource], seed: int) -> Recipe:
    where = f"recipes[{name!r}]"
    method = r.get("method", "sft")
    parts = r.get("mix") or [{"dataset": r["dataset"], "examples": r["max_examples"]}]
    for i, part in enumerate(parts):
        _require(part["dataset"], datasets, "dataset", f"{where}." + (f"mix[{i}].dataset" if "mix" in r else "dataset"))
    formats = {part["dataset"]: datasets[part["dataset"]].format for part in parts}
    if method == "sft":  # (on a preference dataset, sft trains on the chosen responses)
        if "dpo" in r:
            raise ConfigError(f"{where}.dpo: DPO settings need method: dpo")
    else:
        if "mix" in r:
            raise ConfigError(f"{where}.mix: method dpo trains on one preference dataset; give `dataset`")
        if formats[r["dataset"]] not in PREFERENCE_FORMATS:
            raise ConfigError(f"{where}.dataset: method dpo needs preference pairs, but dataset {r['dataset']!r} has "
                              f"format {formats[r['dataset']]!r}; give it one of {sorted(PREFERENCE_FORMATS)}")
    if "mix" in r and r["max_examples"] is not None:
        raise ConfigError(f"{where}.max_examples: with `mix`, give each dataset's `examples` instead")
    dpo = {"beta": 0.1, "loss_type": "sigmoid", "swap_labels": False, **r.get("dpo", {})}
    training = dict(r["training"])
    training["seed"] = training["seed"] if training["seed"] is not None else seed
    return Recipe(
        name=name,
        method=method,
        parts=tuple(DatasetPart(datasets[p["dataset"]], p["examples"]) for p in parts),
        template=r["template"],
        max_examples=r["max_examples"],
        lora=LoraSettings(**{**r["lora"], "target_modules": tuple(r["lora"]["target_modules"])}),
        training=TrainingSettings(**training),
        dpo=DPOSettings(**dpo) if method == "dpo" else None,
        pool_as=r.get("pool_as"),
    )


def _resolve_starts(variants: dict[str, Variant]) -> dict[str, Variant]:
    """Sequential recipes: each `from` names a fine-tuned variant of the same family, without cycles; a variant
    that starts from another takes its root model (whose resources and Hub files it needs)."""
    def root(name: str, seen: tuple[str, ...]) -> Variant:
        v = variants[name]
        if not v.start:
            return v
        where = f"variants[{name!r}].from"
        _require(v.start, variants, "variant", where)
        start = variants[v.start]
        if v.start in seen:
            raise ConfigError(f"{where}: the chain {' -> '.join(seen + (v.start,))} is a cycle")
        if not start.recipe:
            raise ConfigError(f"{where}: {v.start!r} has no recipe, so no adapter to merge; start from a variant with "
                              f"role {' or '.join(TRAINED_ROLES)} (or give this variant `model: <its model>`)")
        if start.family != v.family:
            raise ConfigError(f"{where}: {v.start!r} is in family {start.family!r}, this variant in {v.family!r}; "
                              f"a variant starts from one of its own family")
        return root(v.start, seen + (v.start,))

    return {name: replace(v, model=root(name, (name,)).model) if v.start else v for name, v in variants.items()}


#: the scorer types that load a transformers checkpoint named by `model` (a local path, or a Hub id at `revision`)
MODEL_SCORERS = ("hf-classifier", "guard", "reward-model")
#: the options each scorer type needs
SCORER_NEEDS = {"hf-classifier": ("model", "label"), "guard": ("model", "unsafe_token", "safe_token"),
                "reward-model": ("model",)}
#: the options that only some scorer types take
SCORER_ONLY = {"measures": ("hf-classifier",), "match": ("refusal",), "phrases": ("refusal",),
               "template": ("guard", "reward-model"), "unsafe_token": ("guard",), "safe_token": ("guard",),
               "answer_prefix": ("guard",), "trust_remote_code": MODEL_SCORERS}


def _scorer(name: str, s: dict) -> ScorerSpec:
    where = f"scorers[{name!r}]"
    needs = SCORER_NEEDS.get(s["type"], ())
    if not all(s.get(key) for key in needs):
        listed = [repr(key) for key in needs]
        raise ConfigError(f"{where}: type {s['type']} needs {', '.join(listed[:-1])} and {listed[-1]}"
                          if len(listed) > 1 else f"{where}: type {s['type']} needs {listed[0]}")
    for key, only in SCORER_ONLY.items():
        if key in s and s["type"] not in only:
            raise ConfigError(f"{where}.{key}: only a scorer of type {' or '.join(only)} takes it, this one is "
                              f"{s['type']}")
    return ScorerSpec(name=name, type=s["type"], measures=_measures(s), languages=_scorer_languages(name, s),
                      probes=tuple(s["probes"]) if "probes" in s else None,
                      options={k: v for k, v in s.items() if k not in ("type", *UNDIGESTED["scorers"])})


def _measures(s: dict) -> str:
    """What a scorer's score measures: refusal (a refusal scorer), reward (a reward model), else its `measures`
    (an hf-classifier's), toxicity by default."""
    return {"refusal": "refusal", "reward-model": "reward"}.get(s["type"], s.get("measures", "toxicity"))


def _scorer_languages(name: str, s: dict) -> tuple[str, ...] | None:
    """The languages a scorer may score: its declared `languages`, else those finetox knows for its type (Detoxify's
    models, alt-profanity-check, the built-in refusal phrases), else None (not restricted). A declaration may narrow
    the known ones but not widen them: Detoxify's multilingual model has seen no German. With a Detoxify checkpoint
    of your own, your declaration stands (you know what you trained it on)."""
    known = trained_languages(s["type"], s)
    declared = s.get("languages")
    if declared is None:
        return known
    declared = tuple(dict.fromkeys(tag.lower() for tag in declared))
    fixed = known is not None and not (s["type"] == "detoxify" and s.get("checkpoint"))
    unknown = [tag for tag in declared if fixed and not covers(known, tag)]
    if unknown:
        what = (f"Detoxify's {s.get('model_type') or 'original'!r} model" if s["type"] == "detoxify"
                else f"type {s['type']}")
        raise ConfigError(f"scorers[{name!r}].languages: {unknown} not among the languages {what} was trained on or "
                          f"written for ({', '.join(known)}); declare a subset of those, or use a scorer that reads "
                          f"{', '.join(unknown)}")
    return declared


def _check_languages(study: Study) -> None:
    """Every probe set is scored only by scorers that read its language: the run scorers on every run probe set, a
    guard's selector on every probe set its guarded variant answers (evaluation and training prompts), and a produced
    prompt set's judge on the set it is drawn from. A scorer
    applied to a language it was not trained on gives numbers that look like rates and mean nothing."""
    pairs = {(probe, scorer) for probe in study.run_probes for scorer in study.run_scorers
             if study.scored_by(probe, scorer)}
    pairs |= {(probe, scorer) for scorer, probes in study.judged_probes().items() for probe in probes}
    for probe, scorer in sorted(pairs):
        language, languages = study.probes[probe].language, study.scorers[scorer].languages
        if not covers(languages, language):
            declared = ("declared" if study.raw["scorers"][scorer].get(LANGUAGE_KEYS["scorers"]) is not None
                        else "not declared; finetox's for its type")
            raise ConfigError(
                f"probes[{probe!r}].language is {language!r}, which scorers[{scorer!r}].languages ({declared}: "
                f"{', '.join(languages)}) does not include: the run would score the continuations of {probe!r} with a "
                f"scorer not trained on their language. Score it with a scorer whose languages include {language!r}, "
                f"or leave {probe!r} or {scorer!r} out of the run")


def _check_produced(block: str, name: str, produced: Produced, raw: dict) -> None:
    """A produced dataset or prompt set names a variant finetox generates, a declared protocol, and a training prompt
    set: a probe set that is not evaluated (a model trained on answers to its evaluation prompts would be graded on
    them). A prompt set (the prompts a variant erred on) is drawn from a probe set of the config's own, judged by a
    toxicity or refusal scorer that grades none of the run unless the config allows it, and is never evaluated."""
    where = f"{block}[{name!r}].produced"
    for key, table in (("variant", raw["variants"]), ("probe", raw["probes"]), ("protocol", raw["protocols"]),
                       *([("scorer", raw["scorers"])] if produced.prompts else [])):
        _require(getattr(produced, key), table, key, f"{where}.{key}")
    if "scores" in raw["variants"][produced.variant]:
        raise ConfigError(f"{where}.variant: {produced.variant!r} is scored elsewhere; a produced {block[:-1]} is made "
                          f"of the answers of a variant finetox generates")
    if produced.probe in raw["run"]["probes"]:
        raise ConfigError(f"{where}.probe: {produced.probe!r} is an evaluation probe set (in run.probes): a model "
                          f"trained on answers to the prompts it is evaluated on would be graded on its training data; "
                          f"give a probe set of training prompts that run.probes does not list")
    if not produced.prompts:
        return
    if "produced" in raw["probes"][produced.probe]:
        raise ConfigError(f"{where}.probe: {produced.probe!r} is itself produced by the run; draw the prompts a variant "
                          f"erred on from a probe set of your own (a later round filters it again with its own model)")
    if name in raw["run"]["probes"]:
        # chosen because one model's samples scored high: on them that model regresses to its mean and any other
        # looks better than it is; the set is defined by the run's own noise
        raise ConfigError(f"run.probes: {name!r} is produced by the run from {produced.variant!r}'s scored answers; "
                          f"prompts chosen by a model's own scores are no fixed population to evaluate on (that "
                          f"model's rate there would fall back towards its mean by selection alone). Train on it; "
                          f"evaluate on a probe set fixed before the run")
    if raw["probes"][name]["columns"]:
        raise ConfigError(f"{where}: a produced prompt set's table has finetox's own columns (id, prompt, "
                          f"source_subset, samples, erred, max_score); give no `columns`")
    if _measures(raw["scorers"][produced.scorer]) == "reward":
        raise ConfigError(f"{where}.scorer: {produced.scorer!r} is a reward model; an answer errs when a toxicity or "
                          f"refusal scorer scores it at or above the threshold")
    samples = raw["protocols"][produced.protocol]["samples"]
    if produced.min_samples > samples:
        raise ConfigError(f"{where}.min_samples: {produced.min_samples} is more than the {samples} samples per prompt "
                          f"of protocol {produced.protocol!r}; no prompt could be kept")
    if produced.scorer in raw["run"]["scorers"] and not produced.evaluate_with_selector:
        raise ConfigError(f"{where}.scorer: {produced.scorer!r} chooses the prompts that the variants trained on them "
                          f"learn from and is also in run.scorers, so it would grade what it chose (circular "
                          f"evaluation); judge the mistakes with another scorer, or set "
                          f"{where}.evaluate_with_selector: true and read those verdicts as marked")


def _check_capability(settings: dict, datasets: dict[str, TableSource], variants: dict[str, Variant]) -> None:
    """The capability proxy's dataset: declared, an instruction set, and held out of every variant's training."""
    _require(settings["dataset"], datasets, "dataset", "capability.dataset")
    source = datasets[settings["dataset"]]
    if source.format != "instructions":
        raise ConfigError(f"capability.dataset: {source.name!r} has format {source.format!r}; the reference answers "
                          f"are read from an instruction set (format instructions)")
    for v in variants.values():
        for trained in v.recipe.datasets if v.recipe else ():
            same_file = bool(source.path and trained.path) and Path(source.path).resolve() == Path(trained.path).resolve()
            if trained.name == source.name or same_file:
                # a model scores answers it was trained on better: the proxy would reward memorising
                raise ConfigError(f"capability.dataset: {source.name!r} is trained on by recipe {v.recipe.name!r} "
                                  f"(variant {v.name!r}), so its rows are not held out; give a dataset that no "
                                  f"recipe trains on")


def _language(name: str, entry: dict, raw: dict) -> str:
    """A probe set's language: declared, else en; a produced prompt set's is that of the set it is drawn from (a
    probe set of the config's own: _check_produced)."""
    produced = entry.get("produced")
    parent = raw["probes"].get(produced["probe"]) if produced else None
    if not parent or "produced" in parent:  # (an unused produced set is not checked: _check_produced)
        return entry.get("language", DEFAULT_LANGUAGE)
    language = parent.get("language", DEFAULT_LANGUAGE)
    if entry.get("language", language).lower() != language.lower():
        raise ConfigError(f"probes[{name!r}].language: {entry['language']!r}, but its prompts are drawn from "
                          f"{produced['probe']!r}, written in {language!r}; leave `language` out")
    return language


def _asked_variants(block: str, name: str, entry: dict, raw: dict) -> tuple[str, ...] | None:
    """A selective run's variants (probes.<name>.variants, protocols.<name>.variants): declared, generated, and only
    on a probe set or protocol of the run."""
    if "variants" not in entry:
        return None
    where = f"{block}[{name!r}].variants"
    if name not in raw["run"][block]:
        raise ConfigError(f"{where}: {name!r} is not in run.{block} {raw['run'][block]}; only a run "
                          f"{'probe set' if block == 'probes' else 'protocol'} is asked of chosen variants (a training "
                          f"prompt set is answered by the variants of the produced datasets that name it)")
    for variant in entry["variants"]:
        _require(variant, raw["variants"], "variant", where)
        if "scores" in raw["variants"][variant]:
            raise ConfigError(f"{where}: {variant!r} is scored elsewhere; the probe set, protocol and scorer it answers "
                              f"are those of its table (variants.{variant}.scores)")
    return tuple(entry["variants"])


def _check_scored_probes(run: dict, scorers: dict[str, ScorerSpec], variants: dict[str, Variant]) -> None:
    """A scorer that names the probe sets it scores (scorers.<name>.probes) is a run scorer naming run probe sets;
    every run probe set is scored by some run scorer, and a table scored elsewhere by a scorer of its probe set."""
    for name, scorer in scorers.items():
        if scorer.probes is None:
            continue
        where = f"scorers[{name!r}].probes"
        if name not in run["scorers"]:
            raise ConfigError(f"{where}: {name!r} is not in run.scorers {run['scorers']}; only a run scorer is given "
                              f"the probe sets it scores")
        for probe in scorer.probes:
            if probe not in run["probes"]:
                raise ConfigError(f"{where}: {probe!r} is not in run.probes {run['probes']}")
    scored = {probe for name in run["scorers"] for probe in (scorers[name].probes or run["probes"])}
    for probe in run["probes"]:
        if probe not in scored:
            raise ConfigError(f"run.probes: no run scorer scores {probe!r} (each names the probe sets it scores, "
                              f"scorers.<name>.probes); add it to one, or drop {probe!r} from run.probes")
    for v in variants.values():
        if v.external and scorers[v.external.scorer].probes and v.external.probe not in scorers[v.external.scorer].probes:
            raise ConfigError(f"variants[{v.name!r}].scores: its table answers {v.external.probe!r} scored by "
                              f"{v.external.scorer!r}, which scores {list(scorers[v.external.scorer].probes)} only "
                              f"(scorers.{v.external.scorer}.probes)")


def _check_run_is_answered(run: dict, variants: dict[str, Variant]) -> None:
    """Every probe set, protocol and scorer of `run` has a variant that answers it. A variant with a model is
    generated on every probe set x protocol and scored by every scorer; a variant scored elsewhere answers only
    the probe set x protocol x scorer of its table. A study of such tables alone may leave a probe set x protocol
    empty when both are answered elsewhere (tables on two probe sets, each under its own protocol): the report
    shows nothing for it. A probe set, protocol or scorer that nothing answers is refused here."""
    if any(v.external is None for v in variants.values()):
        return
    answers = {v.name: (v.external.probe, v.external.protocol, v.external.scorer) for v in variants.values()}
    listing = "; ".join(f"{name} answers {'/'.join(cell)}" for name, cell in answers.items()) or "none"
    what = {"probes": "probe set", "protocols": "protocol", "scorers": "scorer"}
    for i, key in enumerate(what):
        for item in run[key]:
            if not any(cell[i] == item for cell in answers.values()):
                cells = " x ".join(f"{what[other]} {run[other]}" for other in what if other != key)
                raise ConfigError(
                    f"run.{key}: no variant answers {what[key]} {item!r} under any {cells}: every variant is scored "
                    f"elsewhere, and only a variant with a model (generated on every probe set x protocol) or a "
                    f"score table declared for it (`variants.<name>.scores`) could answer it; the declared tables: "
                    f"{listing}. Add one, or drop {item!r} from run.{key}")


def load(config: dict) -> Study:
    """Validate a config dict (as Snakemake holds it) and build the Study it declares."""
    raw = validate(config)
    seed = raw["seed"]
    models = {
        name: ModelSource(
            name=name,
            path=m.get("path"),
            hub=m.get("hub"),
            revision=m["revision"],
            trust_remote_code=m["trust_remote_code"],
            dtype=m["dtype"],
            max_model_len=m["max_model_len"],
            tensor_parallel_size=m["tensor_parallel_size"],
        )
        for name, m in raw["models"].items()
    }
    datasets = {name: _table_source(name, d) for name, d in raw["datasets"].items()}
    recipes = {name: _recipe(name, r, datasets, seed) for name, r in raw["recipes"].items()}
    variants = {}
    for name, v in raw["variants"].items():
        where = f"variants[{name!r}]"
        external = None
        if "scores" in v:
            scores = v["scores"]
            if "produced" in scores:
                raise ConfigError(f"{where}.scores.produced: only a dataset or a probe set can be produced by the "
                                  f"workflow; give the score table's `path` or `hub`")
            for key, table in (("probe", raw["probes"]), ("protocol", raw["protocols"]), ("scorer", raw["scorers"])):
                _require(scores[key], table, key, f"{where}.scores.{key}")
                if scores[key] not in raw["run"][f"{key}s"]:
                    raise ConfigError(f"{where}.scores.{key}: {scores[key]!r} is not in run.{key}s "
                                      f"{raw['run'][f'{key}s']}, so these scores would enter no comparison")
            external = ExternalScores(_table_source(name, scores), scores["probe"], scores["protocol"], scores["scorer"])
        elif "model" in v:
            _require(v["model"], models, "model", f"{where}.model")
        lever = next((lever for lever in LEVERS.values() if lever.KEY in v), None)  # (the schema allows one)
        role_lever = next((lever for lever in LEVERS.values() if lever.ROLE == v["role"]), None)
        if lever is not role_lever:
            expected = lever or role_lever
            raise ConfigError(f"{where}: role {expected.ROLE!r} and a `{expected.KEY}` block go together (role "
                              f"{v['role']!r}, {'a' if expected.KEY in v else 'no'} `{expected.KEY}` block)")
        if lever:
            for key in ("recipe", "seed", "prompt_format"):
                if v[key] is not None:
                    raise ConfigError(f"{where}.{key}: a {lever.ROLE} variant is built on the answers of its source "
                                      f"({where}.{lever.KEY}.source); it takes no {key} of its own")
        if v["role"] in TRAINED_ROLES and not v["recipe"] and not external:
            raise ConfigError(f"{where}: role {v['role']!r} needs a recipe; declared recipes: {sorted(recipes)}")
        if v["recipe"]:
            _require(v["recipe"], recipes, "recipe", f"{where}.recipe")
            if v["role"] not in TRAINED_ROLES + ("other",) or external:
                raise ConfigError(f"{where}: a recipe is only allowed with roles {list(TRAINED_ROLES) + ['other']} "
                                  f"and a model")
        if "from" in v and not v["recipe"]:
            raise ConfigError(f"{where}.from: a variant that starts from another trains a recipe on it; give `recipe`")
        variants[name] = Variant(
            name=name,
            family=v["family"],
            role=v["role"],
            model=models[v["model"]] if "model" in v else None,
            recipe=recipes.get(v["recipe"]) if v["recipe"] else None,
            seed=v["seed"],
            prompt_format=v["prompt_format"],
            external=external,
            start=v.get("from"),
            lever=lever.settings(v[lever.KEY]) if lever else None,
        )
    variants = _resolve_starts(variants)
    probes = {}
    # (like a produced dataset, a produced prompt set is checked where it is used: answered for a recipe's dataset, or
    # listed in run.probes, where it is refused)
    answered = {d.produced.probe for v in variants.values() if v.recipe for d in v.recipe.datasets if d.produced}
    for name, p in raw["probes"].items():
        subsets = {
            sub: tuple(Filter(**f) for f in filters) for sub, filters in (p.get("subsets") or {}).items()
        }
        if "all" in subsets:
            raise ConfigError(f"probes[{name!r}].subsets: 'all' is reserved for the pooled subset")
        source = _table_source(name, p)
        if source.produced and (name in answered or name in raw["run"]["probes"]):
            _check_produced("probes", name, source.produced, raw)
        probes[name] = ProbeSet(
            source=source,
            subsets=subsets,
            sample_per_subset=p.get("sample_per_subset"),
            language=_language(name, p, raw),
            variants=_asked_variants("probes", name, p, raw),
        )
    # (like a local file, a produced dataset is checked where a variant's recipe trains on it)
    for source in {d.name: d for v in variants.values() if v.recipe for d in v.recipe.datasets}.values():
        if source.produced:
            _check_produced("datasets", source.name, source.produced, raw)
    for name, p in raw["protocols"].items():
        if "system_prompt" in p and p["prompt_format"] != "chat":
            raise ConfigError(f"protocols[{name!r}].system_prompt: a system turn needs prompt_format: chat (a raw "
                              f"prompt is continued as it is)")
        if p["temperature"] == 0 and p["samples"] > 1:
            raise ConfigError(
                f"protocols[{name!r}]: temperature 0 is greedy decoding, which gives {p['samples']} identical "
                f"samples; use samples: 1 or a temperature > 0"
            )
    protocols = {
        name: Protocol(name=name, **{**p, "seed": p["seed"] if p["seed"] is not None else seed,
                                     "variants": _asked_variants("protocols", name, p, raw)})
        for name, p in raw["protocols"].items()
    }
    scorers = {name: _scorer(name, s) for name, s in raw["scorers"].items()}
    run = raw["run"]
    for name, v in variants.items():
        if v.lever:
            lever_of(v.lever).check(name, v.lever, variants, scorers, run["scorers"])
            variants[name] = replace(v, model=variants[v.lever.source].model)
    for key, table in (("probes", probes), ("protocols", protocols), ("scorers", scorers)):
        for item in run[key]:
            _require(item, table, key[:-1], f"run.{key}")
    for name in run["scorers"]:
        if scorers[name].measures == "reward":
            # the tables count continuations above a threshold as toxic (or refused) and call more of them worse;
            # a reward is higher when better, and its sigmoid has no threshold that means "toxic"
            raise ConfigError(f"run.scorers: {name!r} is a reward model; a reward ranks and selects answers, it is no "
                              f"rate of toxic or refused answers to compare variants by, so it cannot be a run scorer: "
                              f"list a toxicity or refusal scorer in run.scorers")
    _check_scored_probes(run, scorers, variants)
    _check_run_is_answered(run, variants)
    comps = raw["comparisons"]
    comparisons = derive_comparisons(variants, comps["kinds"], comps["pairs"])
    if comps["draws"] * comps["chains"] < MIN_ESS:
        raise ConfigError(
            f"comparisons.draws x comparisons.chains = {comps['draws']} x {comps['chains']} draws, fewer than the "
            f"effective sample size of {MIN_ESS} that every fit must reach: give at least {MIN_ESS} draws in all"
        )
    try:
        rope_of(comps["rope"])
    except ValueError as err:
        raise ConfigError(f"comparisons.rope: {err}") from None
    primary = comps["primary_subset"]
    for name in run["probes"]:
        if primary != "all" and primary not in probes[name].subsets:
            raise ConfigError(f"comparisons.primary_subset: {primary!r} is not a subset of probes[{name!r}] (allowed: "
                              f"all, {', '.join(probes[name].subsets) or 'no other: it has no subsets'})")
    used_tables = [(f"probes[{name!r}]", probes[name].source) for name in run["probes"]]
    used_tables += [(f"datasets[{d.name!r}]", d) for v in variants.values() if v.recipe for d in v.recipe.datasets]
    used_tables += [(f"probes[{d.produced.probe!r}]", probes[d.produced.probe].source) for v in variants.values()
                    if v.recipe for d in v.recipe.datasets if d.produced]
    used_tables += [(f"variants[{v.name!r}].scores", v.external.source) for v in variants.values() if v.external]
    if "capability" in raw:
        _check_capability(raw["capability"], datasets, variants)
        used_tables.append((f"datasets[{raw['capability']['dataset']!r}]", datasets[raw["capability"]["dataset"]]))
    if "stereotypes" in raw:
        if "produced" in raw["stereotypes"]:
            raise ConfigError("stereotypes.produced: only a dataset or a probe set can be produced by the workflow; "
                              "give the pair table's `path` or `hub`")
        used_tables.append(("stereotypes", _table_source("stereotypes", raw["stereotypes"])))
    for where, source in used_tables:
        _check_local_table(where, source)
    study = Study(
        raw=raw,
        seed=seed,
        demo=raw["demo"],
        models=models,
        recipes=recipes,
        variants=variants,
        probes=probes,
        protocols=protocols,
        scorers=scorers,
        comparisons=comparisons,
        run_probes=tuple(run["probes"]),
        run_protocols=tuple(run["protocols"]),
        run_scorers=tuple(run["scorers"]),
    )
    _check_languages(study)
    return study


class _StrictLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (the plain loader silently keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges keys that the mapping may override: not a repeat
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(
                    f"{key_node.start_mark.name}, line {key_node.start_mark.line + 1}: key {key!r} is given twice "
                    f"in one mapping (first on line {seen[key] + 1}); YAML would silently keep the second"
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_config_file(path: str | Path) -> dict:
    """A config file as Snakemake reads it, but refusing repeated keys (a variant declared twice)."""
    with open(path) as stream:
        return yaml.load(stream, Loader=_StrictLoader)


def load_file(path: str | Path) -> Study:
    return load(read_config_file(path))
