"""Rule report: the self-contained HTML report."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.config import load
from finetox.stages import job_log, report
from finetox.workflow import Targets

if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        study = load(snakemake.config)
        report(
            study,
            toxicity=snakemake.input.toxicity,
            comparisons=snakemake.input.comparisons,
            pooled=snakemake.input.pooled,
            training_logs=list(snakemake.input.training),
            probe_tables={probe: Targets.probes_table(probe) for probe in study.run_probes},
            posterior_files=Targets(study).all_posteriors(),
            score_files=list(snakemake.input.scores),
            adapters=list(snakemake.input.adapters),
            output=snakemake.output[0],
            degeneration_csv=snakemake.input.degeneration,
            # (the rule asks for these only when `capability` is configured)
            capability_csv=Targets.CAPABILITY_TABLE if study.capability else None,
            capability_comparisons_csv=Targets.CAPABILITY_COMPARISONS_TABLE if study.capability else None,
            capability_provenance=Targets(study).all_capability(provenance=True),
        )
