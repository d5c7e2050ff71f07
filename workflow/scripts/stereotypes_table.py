"""Rule stereotypes_table: stereotype preference per variant and bias type, and the comparisons' paired verdicts."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.config import load
from finetox.stages import job_log, stereotypes_table

if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        stereotypes_table(
            load(snakemake.config),
            list(snakemake.input),
            output=snakemake.output.summary,
            comparisons_output=snakemake.output.comparisons,
        )
