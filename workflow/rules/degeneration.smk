rule degeneration:
    input:
        TARGETS.generations("{probe}", "{protocol}", "{variant}"),
    output:
        TARGETS.degeneration("{probe}", "{protocol}", "{variant}"),
    log:
        "logs/degeneration/{probe}/{protocol}/{variant}.log",
    conda:
        "../../envs/analysis.yaml"
    threads: threads_for("metrics")
    resources:
        **resources_for("metrics"),
    params:
        settings=STUDY.digest("degeneration"),
    script:
        "../scripts/degeneration.py"


rule degeneration_table:
    input:
        TARGETS.all_degeneration(),
    output:
        report(
            TARGETS.DEGENERATION_TABLE,
            caption="../report/degeneration.rst",
            category="Tables",
        ),
    log:
        "logs/tables/degeneration.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    params:
        schema="degeneration",
    script:
        "../scripts/gather.py"
