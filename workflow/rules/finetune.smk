rule finetune:
    input:
        unpack(lambda wildcards: TARGETS.training_inputs(wildcards.variant)),
    output:
        adapter=directory(TARGETS.adapter("{variant}")),
        loss=TARGETS.training_log("{variant}"),
    log:
        "logs/finetune/{variant}.log",
    conda:
        "../../envs/train.yaml"
    threads: threads_for("finetune", model_of_variant)
    resources:
        **resources_for("finetune", model_of_variant),
    params:
        settings=lambda wildcards: STUDY.training_hash(wildcards.variant),
    script:
        "../scripts/finetune.py"
