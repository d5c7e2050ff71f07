"""Rule merge: a fine-tuned variant's checkpoint with its adapter merged in, for a sequential recipe."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.config import load
from finetox.stages import job_log, merge

if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        merge(
            load(snakemake.config),
            snakemake.wildcards.variant,
            adapter_dir=snakemake.input.adapter,
            output_dir=snakemake.output.checkpoint,
        )
