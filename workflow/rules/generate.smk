checkpoint probes:
    input:
        unpack(lambda wildcards: TARGETS.probe_inputs(wildcards.probe)),
    output:
        TARGETS.probes_table("{probe}"),
    log:
        "logs/probes/{probe}.log",
    conda:
        "../../envs/generate.yaml"
    threads: 1
    params:
        probes=lambda wildcards: STUDY.digest("probes", wildcards.probe),
        seed=STUDY.seed,
    script:
        "../scripts/select_probes.py"


rule generate:
    input:
        unpack(lambda wildcards: TARGETS.group_inputs(wildcards.group)),
        unpack(lambda wildcards: TARGETS.group_probe_inputs(wildcards.group)),
    output:
        directory(TARGETS.shard("{group}", "{shard}")),
    log:
        "logs/generate/{group}/{shard}.log",
    conda:
        "../../envs/generate.yaml"
    threads: threads_for("generate", model_of_group)
    resources:
        **resources_for("generate", model_of_group),
    params:
        settings=lambda wildcards: TARGETS.group_settings(wildcards.group),
    script:
        "../scripts/generate.py"


rule merge_generations:
    input:
        shard_dirs,
    output:
        TARGETS.generations("{probe}", "{protocol}", "{variant}"),
    log:
        "logs/merge_generations/{probe}/{protocol}/{variant}.log",
    wildcard_constraints:
        variant=TARGETS.name_pattern(generated=True, guarded=False),
    conda:
        "../../envs/generate.yaml"
    threads: 1
    script:
        "../scripts/merge_generations.py"


# A guarded variant's extra candidates, from the shards of its source's engine (rule select chooses among them).
rule merge_candidates:
    input:
        shard_dirs,
    output:
        TARGETS.candidates("{probe}", "{protocol}", "{variant}"),
    log:
        "logs/merge_candidates/{probe}/{protocol}/{variant}.log",
    wildcard_constraints:
        variant=TARGETS.name_pattern(generated=True, guarded=True),
    conda:
        "../../envs/generate.yaml"
    threads: 1
    script:
        "../scripts/merge_generations.py"
