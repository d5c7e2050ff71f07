"""Rule toxicity_table: one table from the per-variant metrics."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.stages import gather, job_log

if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        gather(list(snakemake.input), snakemake.params.schema, snakemake.output[0])
