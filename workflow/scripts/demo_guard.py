"""Rule demo_guard: train the demo's tiny causal-LM guard."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.config import load
from finetox.stages import demo_guard, job_log

if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        i = snakemake.input
        demo_guard(load(snakemake.config), i.rude, i.clean, i.corpus, snakemake.output.guard, snakemake.output.loss)
