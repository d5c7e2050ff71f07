"""Rule metrics: toxicity metrics of one variant per subset."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.config import load
from finetox.stages import job_log, metrics

if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        w = snakemake.wildcards
        metrics(load(snakemake.config), w.probe, w.protocol, w.scorer, snakemake.input[0],
                snakemake.output.toxicity, snakemake.output.prompts)
