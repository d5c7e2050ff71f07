"""Rule demo_classifier: train the demo's tiny toxicity classifier (its second toxicity scorer)."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.config import load
from finetox.stages import demo_classifier, job_log

if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        i = snakemake.input
        demo_classifier(load(snakemake.config), i.rude, i.clean, i.corpus, snakemake.output.classifier,
                        snakemake.output.loss)
