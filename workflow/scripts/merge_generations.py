"""Rules merge_generations and merge_candidates: one variant's continuations (or a guard's extra candidates) from all shards."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.config import load
from finetox.stages import job_log, merge_generations

if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        w = snakemake.wildcards
        merge_generations(load(snakemake.config), w.probe, w.protocol, w.variant, list(snakemake.input),
                          snakemake.output[0])
