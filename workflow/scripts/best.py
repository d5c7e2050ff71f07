"""Rule best: BEST on per-prompt mean scores for every comparison of one probe set x protocol x scorer."""

from finetox.config import load
from finetox.stages import best, job_log

if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        w = snakemake.wildcards
        best(
            load(snakemake.config),
            w.probe,
            w.protocol,
            w.scorer,
            score_files=list(snakemake.input),
            output=snakemake.output.table,
            posterior=snakemake.output.posterior,
            cores=snakemake.threads,
        )
