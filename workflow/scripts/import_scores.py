"""Rule import_scores: continuations scored elsewhere as a variant's score table."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.config import load
from finetox.stages import import_scores, job_log

if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        import_scores(load(snakemake.config), snakemake.wildcards.variant, snakemake.input.probes, snakemake.output[0])
