# How much to trust the scorer: every toxicity verdict recomputed over the threshold grid (one job per probe set x
# protocol x toxicity scorer, from the score column of the compared variants' score tables), and the toxicity
# scorers' agreement on the same continuations.
rule threshold_sensitivity:
    input:
        scores=lambda wildcards: [
            TARGETS.scores(wildcards.probe, wildcards.protocol, wildcards.scorer, v)
            for v in TARGETS.compared_variants(**wildcards)
        ],
    output:
        TARGETS.threshold_sensitivity("{probe}", "{protocol}", "{scorer}"),
    log:
        "logs/threshold_sensitivity/{probe}/{protocol}/{scorer}.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        **resources_for("compare"),
    params:
        comparisons=lambda wildcards: repr(TARGETS.comparisons_in(**wildcards)),
        settings=STUDY.comparisons_hash(),
        threshold=STUDY.threshold,
        grid=STUDY.threshold_grid,
    script:
        "../scripts/threshold_sensitivity.py"


rule threshold_table:
    input:
        TARGETS.all_threshold_sensitivity(),
    output:
        report(
            TARGETS.THRESHOLD_TABLE,
            caption="../report/threshold_sensitivity.rst",
            category="Tables",
        ),
    log:
        "logs/tables/threshold_sensitivity.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    params:
        schema="threshold_sensitivity",
    script:
        "../scripts/gather.py"


rule scorer_agreement:
    input:
        list(TARGETS.agreement_inputs().values()),
    output:
        report(
            TARGETS.SCORER_AGREEMENT_TABLE,
            caption="../report/scorer_agreement.rst",
            category="Tables",
        ),
    log:
        "logs/tables/scorer_agreement.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        **resources_for("metrics"),
    params:
        threshold=STUDY.threshold,
        scorers=list(STUDY.toxicity_scorers),
    script:
        "../scripts/scorer_agreement.py"
