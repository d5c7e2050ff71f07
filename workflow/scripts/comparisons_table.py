"""Rule comparisons_table: the verdicts of every comparison, with the BEST analysis beside them."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.stages import comparisons_table, job_log

if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        comparisons_table(list(snakemake.input.rates), list(snakemake.input.best), snakemake.output[0])
