"""Rule capability_table: the capability proxy per variant, and the comparisons' paired differences."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.config import load
from finetox.stages import capability_table, job_log

if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        capability_table(
            load(snakemake.config),
            list(snakemake.input),
            output=snakemake.output.summary,
            comparisons_output=snakemake.output.comparisons,
        )
