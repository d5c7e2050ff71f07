"""Rule report: the self-contained HTML report."""

from finetox.config import load
from finetox.stages import job_log, report

if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        report(
            load(snakemake.config),
            toxicity=snakemake.input.toxicity,
            comparisons=snakemake.input.comparisons,
            training_logs=list(snakemake.input.training),
            output=snakemake.output[0],
        )
