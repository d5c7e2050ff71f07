"""Rule generate: continuations of one shard of a probe set by the variants of one generation group."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.config import load
from finetox.stages import generate, job_log
from finetox.workflow import Targets

if __name__ == "__main__":  # vLLM spawns worker processes that re-import this file
    with job_log(snakemake.log[0]):
        study = load(snakemake.config)
        w = snakemake.wildcards
        generate(
            study,
            variants=Targets(study).groups[w.group],
            probe=w.probe,
            protocol_name=w.protocol,
            shard=int(w.shard),
            probes_table=snakemake.input.probes,
            output_dir=snakemake.output[0],
            adapters={key.removeprefix("adapter_"): path for key, path in snakemake.input.items() if key.startswith("adapter_")},
        )
