"""Rule finetune: train one variant's LoRA adapter."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.config import load
from finetox.stages import finetune, job_log

if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        finetune(
            load(snakemake.config),
            snakemake.wildcards.variant,
            adapter_dir=snakemake.output.adapter,
            loss_csv=snakemake.output.loss,
        )
