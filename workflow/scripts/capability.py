"""Rule capability: one variant's NLL of each held-out reference answer."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.config import load
from finetox.stages import capability, job_log

if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        capability(
            load(snakemake.config),
            snakemake.wildcards.variant,
            output=snakemake.output.table,
            provenance_output=snakemake.output.provenance,
            adapter=snakemake.input.get("adapter"),
        )
