rule compare:
    input:
        lambda wildcards: TARGETS.comparison_inputs(**wildcards),
    output:
        table=TARGETS.comparison("{probe}", "{protocol}", "{scorer}", "{comparison}"),
        posterior=TARGETS.comparison(
            "{probe}", "{protocol}", "{scorer}", "{comparison}", "nc"
        ),
    log:
        "logs/compare/{probe}/{protocol}/{scorer}/{comparison}.log",
    conda:
        "../../envs/analysis.yaml"
    threads: threads_for("compare")
    resources:
        **resources_for("compare"),
    params:
        pair=lambda wildcards: repr(STUDY.comparisons[wildcards.comparison]),
        settings=STUDY.digest("comparisons"),
        seed=STUDY.seed,
    script:
        "../scripts/compare.py"


rule comparisons_table:
    input:
        TARGETS.all_comparisons(),
    output:
        report(
            TARGETS.COMPARISONS_TABLE,
            caption="../report/comparisons.rst",
            category="Tables",
        ),
    log:
        "logs/tables/comparisons.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    params:
        schema="comparisons",
    script:
        "../scripts/gather.py"
