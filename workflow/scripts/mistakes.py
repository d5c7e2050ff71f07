"""Rule mistakes: the prompts of a training prompt set on which a variant's answers erred (a produced prompt set)."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.config import load
from finetox.stages import job_log, mistakes

if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        mistakes(load(snakemake.config), snakemake.wildcards.probe, snakemake.input.answers, snakemake.output[0])
