"""Rule select_guarded: a guarded variant's kept answers among its candidates, every probe set x protocol."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.config import load
from finetox.stages import job_log, select_guarded

if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        select_guarded(load(snakemake.config), snakemake.wildcards.variant, list(snakemake.input.source),
                       list(snakemake.input.get("candidates", [])), list(snakemake.output.generations),
                       list(snakemake.output.selections))
