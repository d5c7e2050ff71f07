"""Rule report: the self-contained HTML report."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.config import load
from finetox.stages import job_log, report
from finetox.paths import Targets

if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        study = load(snakemake.config)
        targets = Targets(study)
        report(
            study,
            toxicity=snakemake.input.toxicity,
            comparisons=snakemake.input.comparisons,
            pooled=snakemake.input.pooled,
            degeneration_csv=snakemake.input.degeneration,
            training_logs=list(snakemake.input.training),
            probe_tables={probe: Targets.probes_table(probe) for probe in study.run_probes},
            posterior_files=targets.all_posteriors(),
            # the rule's inputs `scores` and `prompts`, keyed by (probe, protocol, scorer, variant)
            score_files=targets.score_tables(),
            prompt_files=targets.score_tables(per_prompt=True),
            adapters=list(snakemake.input.adapters),
            output=snakemake.output[0],
            # (the rule asks for these only when `capability` is configured)
            capability_csv=Targets.CAPABILITY_TABLE if study.capability else None,
            capability_comparisons_csv=Targets.CAPABILITY_COMPARISONS_TABLE if study.capability else None,
            capability_provenance=targets.all_capability(provenance=True),
            # (the rule asks for these, the per-variant and comparisons tables, only when `stereotypes` is configured)
            stereotype_tables=list(snakemake.input.stereotypes),
            stereotypes_provenance=list(snakemake.input.stereotypes_provenance),
            selection_csv=Targets.SELECTION_TABLE if targets.guarded_variants() else None,
            calibration_files=list(snakemake.input.calibration),
            agreement_csv=snakemake.input.agreement,
            thresholds_csv=snakemake.input.thresholds,
            mistakes_files=dict(zip(study.produced_prompts, targets.all_mistakes())),
        )
