"""Rules compare and best: one analysis of every comparison of one probe set x protocol x scorer."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.config import load
from finetox.stages import best, compare, job_log

# compare computes the exact verdicts from the per-prompt tables, and pools them; best fits BEST on per-prompt scores
if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        w = snakemake.wildcards
        study, outputs = load(snakemake.config), snakemake.output
        if snakemake.rule == "compare":
            compare(study, w.probe, w.protocol, w.scorer, list(snakemake.input.prompts),
                    outputs.table, outputs.posterior, outputs.pooled, cores=snakemake.threads)
        else:
            best(study, w.probe, w.protocol, w.scorer, list(snakemake.input.prompts), outputs.table, outputs.posterior,
                 cores=snakemake.threads)
