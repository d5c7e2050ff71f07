"""Rule degeneration: how often one variant's continuations are empty, stop at once or repeat themselves."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.config import load
from finetox.stages import degeneration, job_log

if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        degeneration(
            load(snakemake.config),
            snakemake.wildcards.probe,
            snakemake.wildcards.protocol,
            generations=snakemake.input[0],
            output=snakemake.output[0],
        )
