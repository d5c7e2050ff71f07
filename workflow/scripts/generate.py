"""Rule generate: one shard of every probe set x protocol x variant that one generation engine serves."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.config import load
from finetox.stages import generate, job_log

if __name__ == "__main__":  # vLLM spawns worker processes that re-import this file
    with job_log(snakemake.log[0]):
        w = snakemake.wildcards
        generate(
            load(snakemake.config),
            group=w.group,
            shard=int(w.shard),
            probes_tables={key.removeprefix("probes_"): path for key, path in snakemake.input.items()
                           if key.startswith("probes_")},
            output_dir=snakemake.output[0],
            adapters={key.removeprefix("adapter_"): path for key, path in snakemake.input.items()
                      if key.startswith("adapter_")},
            inputs=list(snakemake.input),
        )
