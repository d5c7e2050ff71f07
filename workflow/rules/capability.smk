rule capability:
    input:
        unpack(lambda wildcards: TARGETS.capability_inputs(wildcards.variant)),
    output:
        table=TARGETS.capability("{variant}"),
        provenance=TARGETS.capability_provenance("{variant}"),
    log:
        "logs/capability/{variant}.log",
    conda:
        "../../envs/train.yaml"
    threads: threads_for("capability", model_of_variant)
    resources:
        **resources_for("capability", model_of_variant),
    params:
        settings=lambda wildcards: STUDY.capability_hash(wildcards.variant),
    script:
        "../scripts/capability.py"


rule capability_table:
    input:
        TARGETS.all_capability(),
    output:
        summary=report(
            TARGETS.CAPABILITY_TABLE,
            caption="../report/capability.rst",
            category="Tables",
        ),
        comparisons=TARGETS.CAPABILITY_COMPARISONS_TABLE,
    log:
        "logs/tables/capability.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    params:
        # the interval probability, the comparisons, the seed and replicates of their bootstrap, the margin
        settings=STUDY.capability_table_hash(),
    script:
        "../scripts/capability_table.py"
