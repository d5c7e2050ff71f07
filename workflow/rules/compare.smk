rule compare:
    input:
        lambda wildcards: TARGETS.comparison_inputs(**wildcards),
    output:
        table=TARGETS.comparison("{probe}", "{protocol}", "{scorer}", "{comparison}"),
        posterior=TARGETS.comparison("{probe}", "{protocol}", "{scorer}", "{comparison}", "nc"),
    log:
        "logs/compare/{probe}/{protocol}/{scorer}/{comparison}.log",
    params:
        pair=lambda wildcards: STUDY.comparisons[wildcards.comparison],
        settings=config["comparisons"],
    conda:
        "../../envs/analysis.yaml"
    threads: threads_for("compare")
    resources:
        **resources_for("compare"),
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
    params:
        schema="comparisons",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    script:
        "../scripts/gather.py"
