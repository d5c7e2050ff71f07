"""Rules select_guarded and select_guarded_training: a guarded variant's kept answers among its candidates, every
run probe set x protocol (or one training prompt set under one protocol)."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.config import load
from finetox.stages import job_log, select_guarded


def paths(files) -> list[str]:
    """A named input or output as a list (one file is a string)."""
    return [files] if isinstance(files, str) else list(files)


if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        select_guarded(load(snakemake.config), snakemake.wildcards.variant, paths(snakemake.input.source),
                       paths(snakemake.input.get("candidates", [])), paths(snakemake.output.generations),
                       paths(snakemake.output.selections))
