"""Rules compare and best: one analysis of every comparison of one probe set x protocol x scorer."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.config import load
from finetox.stages import best, compare, job_log

# rule -> stage: compare fits the rates (the verdicts) from the metrics, best fits BEST from the scores
ANALYSES = {"compare": compare, "best": best}

if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        w = snakemake.wildcards
        ANALYSES[snakemake.rule](
            load(snakemake.config),
            w.probe,
            w.protocol,
            w.scorer,
            list(snakemake.input),
            output=snakemake.output.table,
            posterior=snakemake.output.posterior,
            cores=snakemake.threads,
        )
