rule score:
    input:
        TARGETS.generations("{probe}", "{protocol}", "{variant}"),
    output:
        TARGETS.scores("{probe}", "{protocol}", "{scorer}", "{variant}"),
    log:
        "logs/score/{probe}/{protocol}/{scorer}/{variant}.log",
    conda:
        "../../envs/score.yaml"
    threads: threads_for("score")
    resources:
        **resources_for("score"),
    params:
        scorer=lambda wildcards: STUDY.digest("scorers", wildcards.scorer),
    script:
        "../scripts/score.py"
