"""Rule calibration_sample: the stratified sample of continuations to label, its design and its key."""

import _workflow_path  # noqa: F401  (first: this checkout's finetox)

from finetox.config import load
from finetox.paths import Targets
from finetox.stages import calibration_sample, job_log

if __name__ == "__main__":
    with job_log(snakemake.log[0]):
        study = load(snakemake.config)
        score_files = Targets(study).calibration_scores(stratifying=True)
        # (the rule's input `scores`, keyed by (probe, protocol, scorer, variant))
        assert sorted(score_files.values()) == sorted(snakemake.input.scores)
        calibration_sample(study, score_files, {probe: Targets.probes_table(probe) for probe in study.run_probes},
                           export=snakemake.output.export, design=snakemake.output.design, key=snakemake.output.key)
