"""Rule compare: the verdicts of every comparison of one probe set x protocol x scorer (rates, binomial)."""

from finetox.config import load
from finetox.stages import compare, job_log

if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        w = snakemake.wildcards
        compare(
            load(snakemake.config),
            w.probe,
            w.protocol,
            w.scorer,
            metric_files=list(snakemake.input),
            output=snakemake.output.table,
            posterior=snakemake.output.posterior,
            cores=snakemake.threads,
        )
