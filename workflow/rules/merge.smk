rule merge:
    input:
        unpack(lambda wildcards: TARGETS.model_inputs(wildcards.variant)),
        adapter=TARGETS.adapter("{variant}"),
    output:
        checkpoint=directory(TARGETS.merged("{variant}")),
    log:
        "logs/merge/{variant}.log",
    conda:
        "../../envs/train.yaml"
    threads: threads_for("merge", model_of_variant)
    resources:
        **resources_for("merge", model_of_variant),
    params:
        settings=lambda wildcards: STUDY.training_hash(wildcards.variant),
    script:
        "../scripts/merge.py"
