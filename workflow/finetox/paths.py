"""Output paths of a run: where each stage writes, and which files a job needs (the DAG follows from these)."""

from __future__ import annotations

from itertools import product
from pathlib import Path

from finetox.config import GENERATIONS, MERGED_CHECKPOINT, MISTAKES, ConfigError, Study

RESULTS = "results"


class Targets:
    """Paths of every stage's outputs for one study."""

    def __init__(self, study: Study):
        self.study = study
        #: the cells each generation engine job serves, by group (finetox.paths.generation_groups)
        self.groups = generation_groups(study)
        #: the group whose jobs write a cell's continuations
        self.group_of = {cell: group for group, cells in self.groups.items() for cell in cells}
        self._planned: dict[str, int | None] = {}
        from finetox.calibration import settings_of

        #: the calibration against human labels (None when the config has no `calibration`)
        self.calibration = settings_of(study)

    # --- one path per stage ----------------------------------------------------------------
    @staticmethod
    def adapter(variant: str) -> str:
        return f"{RESULTS}/finetune/{variant}/adapter"

    @staticmethod
    def training_log(variant: str) -> str:
        return f"{RESULTS}/finetune/{variant}/loss.csv"

    @staticmethod
    def merged(variant: str) -> str:
        """A fine-tuned variant's checkpoint with its adapter merged in (what a sequential recipe starts from)."""
        return MERGED_CHECKPOINT.format(variant=variant)

    @staticmethod
    def probes_table(probe: str) -> str:
        return f"{RESULTS}/probes/{probe}.parquet"

    @staticmethod
    def mistakes(probe: str) -> str:
        """A produced prompt set: the prompts on which a variant's answers erred (rule mistakes), its probe file."""
        return MISTAKES.format(probe=probe)

    @staticmethod
    def shard(group: str, shard: str | int) -> str:
        """One generate job's output: its part of every probe set x protocol x variant of its group."""
        return f"{RESULTS}/generations/shards/{group}/{shard}"

    @staticmethod
    def shard_part(shard_dir: str, probe: str, protocol: str, variant: str) -> str:
        return f"{shard_dir}/{probe}/{protocol}/{variant}.parquet"

    @staticmethod
    def generations(probe: str, protocol: str, variant: str) -> str:
        return GENERATIONS.format(probe=probe, protocol=protocol, variant=variant)

    @staticmethod
    def candidates(probe: str, protocol: str, variant: str) -> str:
        """A guarded variant's extra candidates (its source's sampling, more of it), merged from the shards."""
        return f"{RESULTS}/candidates/{probe}/{protocol}/{variant}.parquet"

    @staticmethod
    def selection(probe: str, protocol: str, variant: str) -> str:
        """A guarded variant's choice per (prompt, sample): which candidate it kept, their harm, filtered or not."""
        return f"{RESULTS}/selection/{probe}/{protocol}/{variant}.parquet"

    @staticmethod
    def scores(probe: str, protocol: str, scorer: str, variant: str) -> str:
        return f"{RESULTS}/scores/{probe}/{protocol}/{scorer}/{variant}.parquet"

    @staticmethod
    def metrics(probe: str, protocol: str, scorer: str, variant: str) -> str:
        return f"{RESULTS}/metrics/{probe}/{protocol}/{scorer}/{variant}.csv"

    @staticmethod
    def prompt_metrics(probe: str, protocol: str, scorer: str, variant: str) -> str:
        """One variant's per-prompt table (samples, mean and maximum score, toxic): the comparisons' input."""
        return f"{RESULTS}/metrics/{probe}/{protocol}/{scorer}/{variant}.prompts.parquet"

    @staticmethod
    def degeneration(probe: str, protocol: str, variant: str) -> str:
        return f"{RESULTS}/degeneration/{probe}/{protocol}/{variant}.csv"

    @staticmethod
    def comparisons(probe: str, protocol: str, scorer: str, ext: str = "csv", analysis: str = "rates") -> str:
        """One analysis (rates: the verdicts; best: the scores; pooled: each kind across families) of every
        comparison of one probe set x protocol x scorer (csv), or its posterior (nc)."""
        return f"{RESULTS}/compare/{probe}/{protocol}/{scorer}/{analysis}.{ext}"

    @staticmethod
    def threshold_sensitivity(probe: str, protocol: str, scorer: str) -> str:
        """Every verdict of one probe set x protocol x toxicity scorer recomputed at each threshold of the grid."""
        return f"{RESULTS}/compare/{probe}/{protocol}/{scorer}/thresholds.csv"

    @staticmethod
    def capability(variant: str) -> str:
        """One variant's NLL of each held-out reference answer (the capability proxy)."""
        return f"{RESULTS}/capability/{variant}.csv"

    @staticmethod
    def capability_provenance(variant: str) -> str:
        """What the capability job loaded and ran with (a CSV has no metadata to carry it)."""
        return f"{RESULTS}/capability/{variant}.json"

    @staticmethod
    def stereotypes(variant: str) -> str:
        """One variant's log-likelihoods of each stereotype pair's two sentences."""
        return f"{RESULTS}/stereotypes/{variant}.csv"

    @staticmethod
    def stereotypes_provenance(variant: str) -> str:
        """What the stereotypes job loaded and ran with (a CSV has no metadata to carry it)."""
        return f"{RESULTS}/stereotypes/{variant}.json"

    CAPABILITY_TABLE = f"{RESULTS}/tables/capability.csv"
    CAPABILITY_COMPARISONS_TABLE = f"{RESULTS}/tables/capability_comparisons.csv"
    STEREOTYPES_TABLE = f"{RESULTS}/tables/stereotypes.csv"
    STEREOTYPE_COMPARISONS_TABLE = f"{RESULTS}/tables/stereotype_comparisons.csv"
    TOXICITY_TABLE = f"{RESULTS}/tables/toxicity.csv"
    COMPARISONS_TABLE = f"{RESULTS}/tables/comparisons.csv"
    POOLED_TABLE = f"{RESULTS}/tables/pooled.csv"
    DEGENERATION_TABLE = f"{RESULTS}/tables/degeneration.csv"
    SELECTION_TABLE = f"{RESULTS}/tables/selection.csv"
    SCORER_AGREEMENT_TABLE = f"{RESULTS}/tables/scorer_agreement.csv"
    THRESHOLD_TABLE = f"{RESULTS}/tables/threshold_sensitivity.csv"
    REPORT = f"{RESULTS}/report/report.html"
    # calibration against human labels (finetox.calibration): the file to label, its design and key; the tables
    CALIBRATION_EXPORT = f"{RESULTS}/calibration/to_label.csv"
    CALIBRATION_DESIGN = f"{RESULTS}/calibration/design.csv"
    CALIBRATION_SAMPLE = f"{RESULTS}/calibration/sample.parquet"
    SCORER_ACCURACY_TABLE = f"{RESULTS}/tables/scorer_accuracy.csv"
    CORRECTED_RATES_TABLE = f"{RESULTS}/tables/corrected_rates.csv"
    CORRECTED_COMPARISONS_TABLE = f"{RESULTS}/tables/corrected_comparisons.csv"
    #: the demo labeller's labels of the exported sample (rule demo_labels)
    DEMO_LABELS = f"{RESULTS}/demo/labels.csv"

    # --- what the run asks for -------------------------------------------------------------
    def _runs(self):
        s = self.study
        return [run for run in product(s.run_probes, s.run_protocols, s.run_scorers) if s.scored_by(run[0], run[2])]

    def variants_in(self, probe: str, protocol: str, scorer: str) -> list[str]:
        """The variants of one probe set x protocol x scorer: every generated one the probe set is asked of, and
        the external score tables declared for it."""
        return [v.name for v in self.study.variants.values()
                if (self.study.asks(probe, protocol, v.name) if not v.external
                    else (v.external.probe, v.external.protocol, v.external.scorer) == (probe, protocol, scorer))]

    def comparisons_in(self, probe: str, protocol: str, scorer: str) -> list:
        """The comparisons of one probe set x protocol x scorer, by name: the compare rules' rerun trigger, which
        reordering the config's variants must not pull."""
        present = set(self.variants_in(probe, protocol, scorer))
        return sorted((c for c in self.study.comparisons.values() if {c.baseline, c.treatment} <= present),
                      key=lambda c: c.name)

    def all_metrics(self) -> list[str]:
        return [self.metrics(*run, v) for run in self._runs() for v in self.variants_in(*run)]

    def _compared_runs(self):
        return [run for run in self._runs() if self.comparisons_in(*run)]

    def all_comparisons(self, analysis: str = "rates") -> list[str]:
        if analysis == "best" and not self.study.compare_settings["best"]:
            return []
        runs = self._compared_runs()
        if analysis == "best":  # BEST models continuous scores; a refusal scorer's are 0 or 1, its rates say it all
            runs = [run for run in runs if self.study.scorers[run[2]].measures == "toxicity"]
        return [self.comparisons(*run, analysis=analysis) for run in runs]

    def all_threshold_sensitivity(self) -> list[str]:
        """The threshold grid's verdicts of every compared probe set x protocol x toxicity scorer (a refusal scorer's
        scores are 0 or 1: no threshold moves them)."""
        return [self.threshold_sensitivity(*run) for run in self._compared_runs()
                if self.study.scorers[run[2]].measures == "toxicity"]

    def agreement_inputs(self) -> dict[tuple[str, str, str, str], str]:
        """The score tables the scorers' agreement reads: every toxicity scorer's, by (probe, protocol, scorer,
        variant)."""
        toxicity = set(self.study.toxicity_scorers)
        return {key: path for key, path in self.score_tables().items() if key[2] in toxicity}

    def scorer_inputs(self, scorer: str) -> dict[str, str]:
        """A scorer's local checkpoint (so that the rule that builds it, such as demo_classifier, runs first); none
        for Hub ids and scorers without a model."""
        from finetox.hub import local_model

        spec = self.study.scorers[scorer]
        model = spec.options.get("model")
        return {"model": model} if model and local_model(model) else {}

    def all_posteriors(self) -> dict[tuple[str, str, str], str]:
        return {run: self.comparisons(*run, ext="nc") for run in self._compared_runs()}

    def all_training_logs(self) -> list[str]:
        return [self.training_log(v.name) for v in self.study.variants.values() if v.recipe]

    def score_tables(self, per_prompt: bool = False) -> dict[tuple[str, str, str, str], str]:
        """(probe, protocol, scorer, variant) -> that variant's score table (or its per-prompt table), for every
        variant in every probe set x protocol x scorer."""
        path = self.prompt_metrics if per_prompt else self.scores
        return {(*run, v): path(*run, v) for run in self._runs() for v in self.variants_in(*run)}

    def variant_tables(self, variant: str, scorer: str | None = None, runs: list[tuple[str, str]] | None = None
                       ) -> list[str]:
        """A generated variant's generation tables (or, given a scorer, its score tables by that scorer) of each
        probe set x protocol it answers (or of `runs`, given a pattern such as "{variant}"), in one order: one score
        job's inputs and outputs."""
        if runs is None:
            runs = [(probe, protocol) for probe, protocol in self.study.variant_runs(variant)
                    if scorer is None or self.study.scored_by(probe, scorer)]
        if scorer is None:
            return [self.generations(probe, protocol, variant) for probe, protocol in runs]
        return [self.scores(probe, protocol, scorer, variant) for probe, protocol in runs]

    def variant_classes(self, guarded: bool | None = None) -> dict[tuple[tuple[str, str], ...], list[str]]:
        """The generated variants (given `guarded`: guarded ones, or the others) by the probe set x protocol runs they
        answer, the full run's first: a rule whose outputs span a variant's runs (select_guarded) is one rule per
        class, as a rule's outputs cannot depend on a wildcard's value (one class without selective runs)."""
        classes: dict[tuple[tuple[str, str], ...], list[str]] = {}
        for variant in self.name_list(generated=True, guarded=guarded):
            if runs := tuple(self.study.variant_runs(variant)):  # (a variant asked nothing has no such job)
                classes.setdefault(runs, []).append(variant)
        return dict(sorted(classes.items(), key=lambda item: self._run_order(item[0])))

    def score_classes(self) -> list[tuple[tuple[tuple[str, str], ...], list[str], list[str]]]:
        """(runs, scorers, variants) of each score rule: the run scorers by the probe sets they score, crossed with
        the generated variants by the probe sets they answer; each pair of classes scores the runs both take, the
        full run's first (one rule without selective runs)."""
        s = self.study
        by_probes: dict[tuple[str, ...], list[str]] = {}
        for scorer in s.run_scorers:
            by_probes.setdefault(tuple(p for p in s.run_probes if s.scored_by(p, scorer)), []).append(scorer)
        rules: dict[tuple, list[str]] = {}  # (runs, scorers) -> variants: classes that score the same runs, one rule
        for variant_runs, variants in self.variant_classes().items():
            for probes, scorers in by_probes.items():
                if runs := tuple(run for run in variant_runs if run[0] in probes):
                    rules.setdefault((runs, tuple(scorers)), []).extend(variants)
        return sorted(((runs, list(scorers), variants) for (runs, scorers), variants in rules.items()),
                      key=lambda rule: (*self._run_order(rule[0]), rule[1]))

    def _run_order(self, runs: tuple) -> tuple:
        """A sort key of classes by their runs: the full run's first."""
        return runs != tuple(product(self.study.run_probes, self.study.run_protocols)), runs

    def all_scores(self) -> list[str]:
        """Every score table (the report reads their continuations and provenance)."""
        return list(self.score_tables().values())

    def generated_variants(self, generated: bool = True) -> list[str]:
        """The variants finetox generates continuations for (or, generated=False, those scored elsewhere)."""
        return [v.name for v in self.study.variants.values() if (v.external is None) == generated]

    def guarded_variants(self) -> list[str]:
        return [v.name for v in self.study.variants.values() if v.guard]

    def sampled_variants(self) -> list[str]:
        """The generated variants whose continuations the generation stage writes as they are (not a lever's, built
        on another variant's answers)."""
        return [v for v in self.generated_variants() if not self.study.variants[v].lever]

    def guarded_cells(self, training: bool = False) -> list[tuple[str, str, str]]:
        """(probe, protocol, variant) of every guarded variant's answers: on the run's probe sets, or (training)
        on the training prompt sets of produced datasets."""
        return [cell for cell in self.study.generation_cells(training) if self.study.variants[cell[2]].guard]

    def all_selections(self) -> list[str]:
        return [self.selection(*cell) for training in (False, True) for cell in self.guarded_cells(training)]

    def selection_tables(self) -> list[str]:
        """The gathered guard table; none when no variant is guarded."""
        return [self.SELECTION_TABLE] if self.guarded_variants() else []

    def selection_inputs(self, variant: str, probe: str | None = None, protocol: str | None = None) -> dict:
        """What a guarded variant's select job reads: its source's continuations (candidate 0) and its extra
        candidates of every run probe set x protocol (or of one training prompt set under one protocol), and the
        selector's checkpoint when it is built locally."""
        from finetox.hub import local_model

        s = self.study
        guard = s.variants[variant].guard
        runs = [(probe, protocol)] if probe else s.variant_runs(variant)
        inputs: dict[str, list[str] | str] = {"source": [self.generations(p, q, guard.source) for p, q in runs]}
        if guard.candidates > 1:
            inputs["candidates"] = [self.candidates(p, q, variant) for p, q in runs]
        spec = s.scorers[guard.scorer]
        if "model" in spec.options and local_model(spec.options["model"]):
            inputs["selector"] = spec.options["model"]
        return inputs

    def all_mistakes(self) -> list[str]:
        """Every produced prompt set the run makes (the report counts what each kept)."""
        return [self.mistakes(probe) for probe in self.study.produced_prompts]

    def mistakes_inputs(self, probe: str) -> dict[str, str]:
        """What a mistakes job reads: the answers it judges, and its judge's checkpoint when it is built locally."""
        from finetox.hub import local_model

        made = self.study.probes[probe].source.produced
        inputs = {"answers": self.generations(*made.cell)}
        model = self.study.scorers[made.scorer].options.get("model")
        if model and local_model(model):
            inputs["judge"] = model
        return inputs

    def all_degeneration(self) -> list[str]:
        """Every generated variant's degeneration measures in every probe set x protocol it answers."""
        return [self.degeneration(*cell) for cell in self.study.asked_cells()]

    def all_capability(self, provenance: bool = False) -> list[str]:
        """Every generated variant's capability table (or its provenance); none when the config has no
        `capability`."""
        if self.study.capability is None:
            return []
        path = self.capability_provenance if provenance else self.capability
        # a guarded variant's model is its source's: its reference-answer NLL would be the source's again
        return [path(v) for v in self.sampled_variants()]

    def capability_tables(self) -> list[str]:
        """The gathered capability tables (summary, comparisons); none when the config has no `capability`."""
        return [self.CAPABILITY_TABLE, self.CAPABILITY_COMPARISONS_TABLE] if self.study.capability is not None else []

    def calibration_scores(self, stratifying: bool = False) -> dict[tuple[str, str, str, str], str]:
        """(probe, protocol, scorer, variant) -> score table of every generated variant by every calibrated scorer
        (or only by the stratifying one): the calibration's population."""
        if self.calibration is None:
            return {}
        s = self.study
        scorers = [self.calibration.scorer] if stratifying else self.calibration.scorers
        return {(probe, protocol, scorer, v): self.scores(probe, protocol, scorer, v)
                for probe, protocol, v in s.asked_cells() for scorer in scorers}

    def calibration_exports(self) -> list[str]:
        """The labelling sample and its design; none when the config has no `calibration`."""
        return [self.CALIBRATION_EXPORT, self.CALIBRATION_DESIGN] if self.calibration else []

    def calibration_tables(self) -> list[str]:
        """The calibration's tables; none until `calibration.labels` names a labelled file."""
        if self.calibration is None or not self.calibration.labels:
            return []
        return [self.SCORER_ACCURACY_TABLE, self.CORRECTED_RATES_TABLE, self.CORRECTED_COMPARISONS_TABLE]

    def calibration_inputs(self) -> dict[str, str | list[str]]:
        """What the calibrate job reads: the sample's key, the labelled file and every calibrated scorer's score
        tables of the generated variants; none without labels."""
        if not self.calibration_tables():
            return {}
        return {"key": self.CALIBRATION_SAMPLE, "labels": self.calibration.labels,
                "scores": list(self.calibration_scores().values())}

    def calibration_report_inputs(self) -> list[str]:
        """What the report reads of the calibration: its tables once labels are given, else the sample's design
        (the report says the corrected rates await labels); none without `calibration`."""
        return self.calibration_tables() or self.calibration_exports()

    def all_stereotypes(self, provenance: bool = False) -> list[str]:
        """Every generated variant's stereotype-pair scores (or their provenance); none when the config has no
        `stereotypes`."""
        if self.study.stereotypes is None:
            return []
        path = self.stereotypes_provenance if provenance else self.stereotypes
        # a guarded variant's model is its source's: its sentence log-likelihoods would be the source's again
        return [path(v) for v in self.sampled_variants()]

    def stereotype_tables(self) -> list[str]:
        """The gathered stereotype tables (per variant, comparisons); none when the config has no `stereotypes`."""
        return [self.STEREOTYPES_TABLE, self.STEREOTYPE_COMPARISONS_TABLE] if self.study.stereotypes is not None else []

    def final(self) -> list[str]:
        return [self.TOXICITY_TABLE, self.COMPARISONS_TABLE, self.POOLED_TABLE, self.DEGENERATION_TABLE,
                self.SCORER_AGREEMENT_TABLE, self.THRESHOLD_TABLE, *self.capability_tables(), *self.stereotype_tables(),
                *self.selection_tables(), *self.calibration_exports(), *self.calibration_tables(), self.REPORT]

    # --- inputs of jobs ----------------------------------------------------------------------
    def model_inputs(self, variant: str) -> dict[str, str]:
        """The local checkpoint directory a variant loads (so the rule that builds it, demo_models or merge, runs
        first); none for Hub ids."""
        if self.study.variants[variant].external:
            return {}
        model = self.study.checkpoint(variant)
        return {"model": model.path} if model.path else {}

    def training_inputs(self, variant: str) -> dict[str, str]:
        """The checkpoint a fine-tune trains on and the local files of its recipe's datasets (so that editing one
        retrains it, and what follows); none for Hub datasets, whose `revision` is in the rerun digest."""
        inputs = self.model_inputs(variant)
        for dataset in self.study.variants[variant].recipe.datasets:
            if dataset.path:
                inputs[f"dataset_{dataset.name}"] = dataset.path
        return inputs

    def _scoring_inputs(self, variant: str, source, key: str) -> dict[str, str]:
        """The checkpoint a job that scores texts under a variant loads, for a fine-tuned variant its adapter, and
        the scored table's local file as `key` (editing it rescores every variant)."""
        inputs = self.model_inputs(variant)
        if self.study.variants[variant].recipe:
            inputs["adapter"] = self.adapter(variant)
        if source is not None and source.path:
            inputs[key] = source.path
        return inputs

    def capability_inputs(self, variant: str) -> dict[str, str]:
        """What a capability job reads (_scoring_inputs): the reference set's local file is `dataset`."""
        return self._scoring_inputs(variant, self.study.capability_source, "dataset")

    def stereotypes_inputs(self, variant: str) -> dict[str, str]:
        """What a stereotypes job reads (_scoring_inputs): the pair table's local file is `pairs`."""
        return self._scoring_inputs(variant, self.study.stereotypes_source, "pairs")

    def probe_inputs(self, probe: str) -> dict[str, str]:
        """The local probe file (so editing it reruns the selection; none for Hub datasets), and for a training
        prompt set the run's probe tables, which none of its prompts may repeat."""
        path = self.study.probes[probe].source.path
        inputs = {"table": path} if path else {}
        if probe in self.study.training_probes:
            inputs |= {f"evaluation_{name}": self.probes_table(name) for name in self.study.run_probes}
        return inputs

    def shard_plan(self, group: str, prompt_counts: dict[str, int]) -> list:
        """The pieces of work of each generate job of a group (finetox.generation_plan), given each run probe
        set's number of prompts."""
        from finetox import generation_plan as plan

        segments = plan.segments(self.study, self.groups[group], prompt_counts)
        return plan.shards(segments, self.study.generation["tokens_per_job"], plan.batch_multiple(self.study.generation))

    def shards(self, probe: str, protocol: str, variant: str, prompt_counts: dict[str, int]) -> list[str]:
        """The shard directories that hold part of a variant's continuations of a probe set under a protocol."""
        group = self.group_of[probe, protocol, variant]
        return [self.shard(group, i) for i, pieces in enumerate(self.shard_plan(group, prompt_counts))
                if any((p.segment.probe, p.segment.protocol, p.segment.variant) == (probe, protocol, variant)
                       for p in pieces)]

    def planned_prompts(self, probe: str) -> int | None:
        """How many prompts the probes job will select, when its source can be read here (a local file, or a
        Hub dataset already in the cache); None when it cannot, and the probes checkpoint must run first.

        This is what lets a dry run list every generation job. The count comes from the same selection
        the probes job runs, memoised under .snakemake/ by the source's identity and the probe settings.
        """
        if self.study.probes[probe].source.produced:
            return None  # made by the run: its size is known once its probes job ran, not from an older file
        if probe not in self._planned:  # asked once per merge job: look the source up once per probe set
            self._planned[probe] = self._count_planned_prompts(probe)
        return self._planned[probe]

    def _count_planned_prompts(self, probe: str) -> int | None:
        from finetox.config import config_hash

        fingerprint = _source_fingerprint(self.study.probes[probe].source)
        if fingerprint is None:
            return None
        key = config_hash([fingerprint, self.study.digest("probes", probe), self.study.seed])
        memo = Path(".snakemake") / "finetox" / "planned-prompts" / f"{probe}-{key}"
        if memo.exists():
            return int(memo.read_text())
        from finetox.data import load_probes

        count = len(load_probes(self.study.probes[probe], self.study.seed))
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.write_text(str(count))
        return count

    def group_inputs(self, group: str) -> dict[str, str]:
        """The checkpoint a generation group loads and the adapters of its fine-tuned variants."""
        members = self.members(group)
        inputs = self.model_inputs(members[0])
        for variant in members:
            adapter = self.study.adapter_variant(variant)
            if adapter:
                inputs[f"adapter_{adapter}"] = self.adapter(adapter)
        return inputs

    def group_settings(self, group: str) -> dict[str, str | int | None]:
        """What makes a group's continuations what they are (the generate rule's rerun trigger): each probe set x
        protocol x variant's digest, and the job size (it decides which prompts each job holds)."""
        s = self.study
        settings: dict[str, str | int | None] = {
            f"{probe}/{protocol}/{variant}": s.generation_hash(variant, protocol)
            for probe, protocol, variant in self.groups[group]
        }
        # sorted: Snakemake compares a dict param's items in order, and reordering the config reruns nothing
        return {**dict(sorted(settings.items())), "tokens_per_job": s.generation["tokens_per_job"]}

    def group_probes(self, group: str) -> list[str]:
        """The probe sets and training prompt sets a generation group's cells answer, in their order."""
        return list(dict.fromkeys(c[0] for c in self.groups[group]))

    def group_probe_inputs(self, group: str) -> dict[str, str]:
        """The probe tables a generate job reads: those of the probe sets and training prompt sets its cells answer."""
        return {f"probes_{probe}": self.probes_table(probe) for probe in self.group_probes(group)}

    def members(self, group: str) -> list[str]:
        """The variants a generation group serves, in the order of its cells."""
        return list(dict.fromkeys(variant for _, _, variant in self.groups[group]))

    def training_probe_pattern(self) -> str:
        """A wildcard pattern matching the training prompt sets (none: matches nothing)."""
        return alternatives(self.study.training_probes)

    def produced_prompts_pattern(self) -> str:
        """A wildcard pattern matching the produced prompt sets (none: matches nothing)."""
        return alternatives(self.study.produced_prompts)

    def name_list(self, generated: bool, guarded: bool | None = None) -> list[str]:
        """The generated variants (given `guarded`: those chosen by a guard, or the others), or those scored
        elsewhere."""
        names = self.generated_variants(generated)
        if guarded is not None:
            names = [v for v in names if bool(self.study.variants[v].guard) == guarded]
        return names

    def name_pattern(self, generated: bool, guarded: bool | None = None) -> str:
        """A wildcard pattern matching the variants of name_list."""
        return alternatives(self.name_list(generated, guarded))

    def compared_variants(self, probe: str, protocol: str, scorer: str) -> list[str]:
        return sorted({v for c in self.comparisons_in(probe, protocol, scorer) for v in (c.baseline, c.treatment)})

    def external_inputs(self, variant: str) -> dict[str, str]:
        """The external score table (when local) and the probe table its rows are matched to."""
        external = self.study.variants[variant].external
        inputs = {"probes": self.probes_table(external.probe)}
        if external.source.path:
            inputs["table"] = external.source.path
        return inputs


def alternatives(names) -> str:
    """A wildcard pattern matching exactly these names (none: a pattern that matches nothing)."""
    import re

    return "|".join(map(re.escape, names)) or "(?!)"


#: the suffix of a generation group that answers training prompt sets in a job of its own (its checkpoint's second
#: engine start, where a variant that checkpoint serves trains on those answers)
TRAINING_GROUP = ".training"

#: one generation cell: a probe set x protocol x variant, all of whose continuations one engine job writes
Cell = tuple[str, str, str]


def generation_groups(study: Study) -> dict[str, list[Cell]]:
    """The cells each generation engine job serves, by group name: evaluation cells first, then training cells.

    With `share_engine`, the variants of one checkpoint form a group named after it (fine-tuned ones as unmerged
    adapters); otherwise, or for adapters that must be merged, each variant is its own group. A group's answers
    to training prompt sets (finetox.config.Study.training_cells) are a job of their own, `<group>.training`
    (`generation.training_answers: apart`), or join its evaluation job, one engine start for both
    (`with_evaluation`), unless that would make a cycle: a variant the job serves trains, through any chain of
    jobs, on what the job writes (a fine-tune distilled from its own checkpoint's answers). Answers to a prompt set
    the run produces (the prompts a variant erred on) wait for the answers it is drawn from: `<group>.training-2`
    (and `-3`, ... for a set drawn from those).
    """
    from graphlib import CycleError

    settings = study.generation
    key_of: dict[str, str] = {}
    shared_by_key: dict[str, bool] = {}

    def group_key(variant: str) -> str:
        if variant not in key_of:
            adapter = study.adapter_variant(variant)
            merged = adapter is not None and settings["lora"] == "merged"
            shared = settings["share_engine"] and not merged
            # (a guarded variant's candidates come from its source's engine: one engine per merged adapter)
            key_of[variant] = study.checkpoint(variant).name if shared else adapter if merged else variant
            if shared_by_key.setdefault(key_of[variant], shared) != shared:
                raise ConfigError(f"variant {key_of[variant]!r}: its name equals a model name; rename one of them")
        return key_of[variant]

    evaluation: dict[str, list[Cell]] = {}
    for cell in study.evaluation_cells():
        evaluation.setdefault(group_key(cell[2]), []).append(cell)
    training: dict[str, list[Cell]] = {}
    for cell in study.training_cells():
        training.setdefault(group_key(cell[2]), []).append(cell)
    groups = dict(evaluation)
    for key in sorted(training):  # name order: which group joins does not depend on the config's order
        # answers to a produced prompt set wait for the answers it is drawn from: a later job (`.training-2`, ...)
        for depth, cells in enumerate(_by_depth(study, training[key])):
            groups[key + TRAINING_GROUP + (f"-{depth + 1}" if depth else "")] = cells
    for key in sorted(training) if settings["training_answers"] == "with_evaluation" else ():
        apart = key + TRAINING_GROUP
        if key in evaluation and apart in groups:
            joined = {name: cells for name, cells in groups.items() if name != apart}
            joined[key] = evaluation[key] + groups[apart]
            if _acyclic(study, joined):
                groups = joined
    try:
        job_order(study, groups)
    except CycleError as error:
        raise ConfigError(f"generation jobs {' -> '.join(error.args[1])} wait for each other: a variant trains on a "
                          f"produced dataset whose answers need its own weights (they come from it, or from a "
                          f"variant built on it, or answer prompts chosen by its own answers); "
                          f"datasets.<name>.produced (or the probes.<name>.produced it answers) must name another "
                          f"variant") from None
    return groups


def _acyclic(study: Study, groups: dict[str, list[Cell]]) -> bool:
    """Whether the generation jobs can run in some order (job_order)."""
    from graphlib import CycleError

    try:
        job_order(study, groups)
    except CycleError:
        return False
    return True


def _by_depth(study: Study, cells: list[Cell]) -> list[list[Cell]]:
    """Training cells by how many produced prompt sets stand between them and a probe set of the config's own: the
    answers to a produced set cannot be written before the answers it was drawn from (no empty level)."""
    def depth(probe: str) -> int:
        made = study.probes[probe].source.produced
        return 1 + depth(made.probe) if made else 0

    levels: dict[int, list[Cell]] = {}
    for cell in cells:
        levels.setdefault(depth(cell[0]), []).append(cell)
    return [levels[d] for d in sorted(levels)]


def trained_on(study: Study, variant: str) -> set[Cell]:
    """The generation cells a variant's weights were trained on: the produced datasets of its adapter's recipe and
    of every fine-tune its checkpoint starts from (a lever's variant: its source's)."""
    v = study.variants[variant]
    if v.lever:
        return trained_on(study, v.lever.source)
    cells = trained_on(study, v.start) if v.start else set()
    return cells.union(*(study.produced_from(source) for source in (v.recipe.datasets if v.recipe else ())))


def job_order(study: Study, groups: dict[str, list[Cell]]) -> list[str]:
    """The generation groups in an order in which each job's inputs exist before it runs (graphlib.CycleError when
    none does): a group waits for the groups that write what its variants were trained on or its produced prompt
    sets were drawn from."""
    from graphlib import TopologicalSorter

    group_of = {cell: group for group, cells in groups.items() for cell in cells}
    waits = {group: {group_of[needed] for cell in cells for needed in needs(study, cell)}
             for group, cells in groups.items()}
    return list(TopologicalSorter(waits).static_order())


def needs(study: Study, cell: Cell) -> set[Cell]:
    """The generation cells that must be written before a cell can be: those its variant's weights were trained on,
    and for answers to a produced prompt set, the answers that set was drawn from."""
    probe, _, variant = cell
    return trained_on(study, variant) | study.produced_from(study.probes[probe].source)


def _source_fingerprint(source) -> list | None:
    """What identifies a probe source's content without reading it: a local file's path, size and mtime,
    or the cached snapshot of a Hub dataset; None when neither is here."""
    if source.path:
        file = Path(source.path)
        if not file.is_file():
            return None  # the probes job reports it (or a rule makes it first)
        stat = file.stat()
        return [str(file.resolve()), stat.st_size, stat.st_mtime_ns]
    from finetox.hub import HubItem, snapshot

    try:
        root = snapshot(HubItem(source.hub, "dataset", source.revision, source.files, source.name), local_only=True)
    except Exception:  # not in the cache (or no huggingface_hub): the checkpoint decides after it runs
        return None
    return [str(root)]
