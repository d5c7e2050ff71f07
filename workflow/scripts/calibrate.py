"""Rule calibrate: each toxicity scorer against the labels, and the corrected rates and comparisons."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.config import load
from finetox.paths import Targets
from finetox.stages import calibrate, job_log

if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        study = load(snakemake.config)
        score_files = Targets(study).calibration_scores()
        # (the rule's input `scores`, keyed by (probe, protocol, scorer, variant))
        assert sorted(score_files.values()) == sorted(snakemake.input.scores)
        calibrate(study, snakemake.input.key, snakemake.input.labels, score_files,
                  accuracy_output=snakemake.output.accuracy, rates_output=snakemake.output.rates,
                  comparisons_output=snakemake.output.comparisons)
