"""Rule threshold_sensitivity: every verdict of one probe set x protocol x toxicity scorer over the threshold grid."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.config import load
from finetox.stages import job_log, threshold_sensitivity

if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        w = snakemake.wildcards
        threshold_sensitivity(load(snakemake.config), w.probe, w.protocol, w.scorer, list(snakemake.input.scores),
                              snakemake.output[0])
