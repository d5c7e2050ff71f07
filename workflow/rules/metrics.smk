rule metrics:
    input:
        TARGETS.scores("{probe}", "{protocol}", "{scorer}", "{variant}"),
    output:
        toxicity=TARGETS.metrics("{probe}", "{protocol}", "{scorer}", "{variant}"),
        prompts=TARGETS.prompt_metrics("{probe}", "{protocol}", "{scorer}", "{variant}"),
    log:
        "logs/metrics/{probe}/{protocol}/{scorer}/{variant}.log",
    conda:
        "../../envs/analysis.yaml"
    threads: threads_for("metrics")
    resources:
        **resources_for("metrics"),
    params:
        threshold=STUDY.threshold,
        intervals=(STUDY.compare_settings["hdi_prob"], STUDY.seed),
    script:
        "../scripts/metrics.py"


rule toxicity_table:
    input:
        TARGETS.all_metrics(),
    output:
        report(
            TARGETS.TOXICITY_TABLE,
            caption="../report/toxicity.rst",
            category="Tables",
        ),
    log:
        "logs/tables/toxicity.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    params:
        schema="toxicity",
    script:
        "../scripts/gather.py"
