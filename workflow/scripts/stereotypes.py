"""Rule stereotypes: one variant's log-likelihood of each stereotype pair's two sentences."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.config import load
from finetox.stages import job_log, stereotypes

if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        stereotypes(
            load(snakemake.config),
            snakemake.wildcards.variant,
            output=snakemake.output.table,
            provenance_output=snakemake.output.provenance,
            adapter=snakemake.input.get("adapter"),
        )
