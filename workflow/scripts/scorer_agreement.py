"""Rule scorer_agreement: the toxicity scorers' agreement on the same continuations, per pair and variant."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.config import load
from finetox.paths import Targets
from finetox.stages import job_log, scorer_agreement

if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        study = load(snakemake.config)
        # the rule's inputs, keyed by (probe, protocol, scorer, variant)
        score_files = Targets(study).agreement_inputs()
        if sorted(score_files.values()) != sorted(snakemake.input):
            raise RuntimeError("the score tables keyed here are not the rule's inputs")
        scorer_agreement(study, score_files, snakemake.output[0])
