"""Rule score: toxicity scores of one variant's continuations by one scorer."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.config import load
from finetox.stages import job_log, score

if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        score(load(snakemake.config), snakemake.wildcards.scorer, snakemake.input[0], snakemake.output[0])
