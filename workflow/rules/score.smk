rule score:
    input:
        TARGETS.generations("{probe}", "{protocol}", "{variant}"),
    output:
        TARGETS.scores("{probe}", "{protocol}", "{scorer}", "{variant}"),
    log:
        "logs/score/{probe}/{protocol}/{scorer}/{variant}.log",
    params:
        scorer=lambda wildcards: config["scorers"][wildcards.scorer],
    conda:
        "../../envs/score.yaml"
    threads: threads_for("score")
    resources:
        **resources_for("score"),
    script:
        "../scripts/score.py"
