"""Rule demo_labels: the demo labeller's labels of the exported sample."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.config import load
from finetox.stages import demo_labels, job_log

if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        demo_labels(load(snakemake.config), snakemake.input[0], snakemake.output[0])
