"""Checkpoint probes: the prompts of one probe set that this run uses, with their subsets."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.config import load
from finetox.stages import job_log, select_probes

if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        select_probes(load(snakemake.config), snakemake.wildcards.probe, snakemake.output[0],
                      evaluation={key.removeprefix("evaluation_"): path for key, path in snakemake.input.items()
                                  if key.startswith("evaluation_")})
