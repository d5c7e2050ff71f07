# The sample of continuations to label (stratified by variant x score band of the stratifying scorer), blind to
# scores and variants; its design and key beside it.
rule calibration_sample:
    input:
        scores=list(TARGETS.calibration_scores(stratifying=True).values()),
        probes=[TARGETS.probes_table(probe) for probe in STUDY.run_probes],
    output:
        export=TARGETS.CALIBRATION_EXPORT,
        design=TARGETS.CALIBRATION_DESIGN,
        key=TARGETS.CALIBRATION_SAMPLE,
    log:
        "logs/calibration/sample.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    params:
        settings=calibration_hash("sample"),
    script:
        "../scripts/calibration_sample.py"


# Each toxicity scorer against the labels: sensitivity, specificity, corrected rates and comparisons.
rule calibrate:
    input:
        unpack(lambda wildcards: TARGETS.calibration_inputs()),
    output:
        accuracy=report(
            TARGETS.SCORER_ACCURACY_TABLE,
            caption="../report/calibration.rst",
            category="Tables",
        ),
        rates=TARGETS.CORRECTED_RATES_TABLE,
        comparisons=TARGETS.CORRECTED_COMPARISONS_TABLE,
    log:
        "logs/calibration/calibrate.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    params:
        settings=calibration_hash("estimate"),
    script:
        "../scripts/calibrate.py"
