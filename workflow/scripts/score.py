"""Rule score: one scorer's scores of one variant's continuations, every probe set x protocol."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.config import load
from finetox.stages import job_log, score

if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        score(load(snakemake.config), snakemake.wildcards.scorer, list(snakemake.input.generations),
              list(snakemake.output))
