rule stereotypes:
    input:
        unpack(lambda wildcards: TARGETS.stereotypes_inputs(wildcards.variant)),
    output:
        table=TARGETS.stereotypes("{variant}"),
        provenance=TARGETS.stereotypes_provenance("{variant}"),
    log:
        "logs/stereotypes/{variant}.log",
    conda:
        "../../envs/train.yaml"
    threads: threads_for("stereotypes", model_of_variant)
    resources:
        **resources_for("stereotypes", model_of_variant),
    params:
        settings=lambda wildcards: STUDY.stereotypes_hash(wildcards.variant),
    script:
        "../scripts/stereotypes.py"


rule stereotypes_table:
    input:
        TARGETS.all_stereotypes(),
    output:
        summary=report(
            TARGETS.STEREOTYPES_TABLE,
            caption="../report/stereotypes.rst",
            category="Tables",
        ),
        comparisons=TARGETS.STEREOTYPE_COMPARISONS_TABLE,
    log:
        "logs/tables/stereotypes.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    params:
        # the comparisons and their rule (HDI probability, prior, ROPE), the seed and replicates of the bootstrap
        settings=STUDY.stereotypes_table_hash(),
    script:
        "../scripts/stereotypes_table.py"
