"""Rule selection_table: how often each guard replaced or filtered its source's answers."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.config import load
from finetox.stages import job_log, selection_table

if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        selection_table(load(snakemake.config), list(snakemake.input), snakemake.output[0])
