"""Rule prefetch: download every Hub model and dataset this config needs (run on a login node)."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.config import load
from finetox.hub import prefetch
from finetox.stages import job_log

if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        for line in prefetch(load(snakemake.config)):
            print(line, flush=True)
