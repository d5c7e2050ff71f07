"""Rule demo_models: build the demo's tiny base and instruct checkpoints."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.config import load
from finetox.stages import demo_models, job_log

if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        demo_models(
            load(snakemake.config),
            corpus=snakemake.input.corpus,
            instructions=snakemake.input.instructions,
            base_dir=snakemake.output.base,
            instruct_dir=snakemake.output.instruct,
            loss_csv=snakemake.output.loss,
        )
