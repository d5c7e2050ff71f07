"""Rule generate: continuations of one probe set by one variant under one protocol."""

from finetox.config import load
from finetox.stages import generate, job_log

if __name__ == "__main__":  # vLLM spawns worker processes that re-import this file
    with job_log(snakemake.log[0]):
        generate(
            load(snakemake.config),
            snakemake.wildcards.variant,
            snakemake.wildcards.probe,
            snakemake.wildcards.protocol,
            output=snakemake.output[0],
            adapter=snakemake.input.get("adapter"),
        )
