"""Rule prefetch: download what loading this config's Hub models and datasets reads (run on a login node),
and record the commit each resolved to."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.config import load
from finetox.hub import prefetch, prefetch_log, write_prefetch_record
from finetox.stages import job_log

if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        records = prefetch(load(snakemake.config))
        for line in prefetch_log(records):
            print(line, flush=True)
        write_prefetch_record(records, snakemake.params.record)
