rule generate:
    input:
        unpack(generation_inputs),
    output:
        TARGETS.generations("{probe}", "{protocol}", "{variant}"),
    log:
        "logs/generate/{probe}/{protocol}/{variant}.log",
    conda:
        "../../envs/generate.yaml"
    threads: threads_for("generate")
    resources:
        **resources_for("generate"),
    params:
        variant=lambda wildcards: STUDY.variant_hash(wildcards.variant),
        protocol=lambda wildcards: STUDY.digest("protocols", wildcards.protocol),
        probes=lambda wildcards: STUDY.digest("probes", wildcards.probe),
        engine=STUDY.digest("generation"),
    script:
        "../scripts/generate.py"
