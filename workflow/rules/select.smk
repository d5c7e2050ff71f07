# One job per guarded variant: its selector loads once and chooses among the candidates of every probe set x
# protocol (no generation engine).
rule select_guarded:
    input:
        unpack(lambda wildcards: TARGETS.selection_inputs(wildcards.variant)),
    output:
        generations=TARGETS.variant_tables("{variant}"),
        selections=[
            TARGETS.selection(probe, protocol, "{variant}")
            for probe in STUDY.run_probes
            for protocol in STUDY.run_protocols
        ],
    log:
        "logs/select/{variant}.log",
    wildcard_constraints:
        variant=TARGETS.name_pattern(generated=True, guarded=True),
    conda:
        "../../envs/score.yaml"
    threads: threads_for("score")
    resources:
        **resources_for("score"),
    params:
        settings=lambda wildcards: STUDY.selection_hash(wildcards.variant),
    script:
        "../scripts/select_guarded.py"


rule selection_table:
    input:
        TARGETS.all_selections(),
    output:
        report(
            TARGETS.SELECTION_TABLE,
            caption="../report/selection.rst",
            category="Tables",
        ),
    log:
        "logs/tables/selection.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    script:
        "../scripts/selection_table.py"


# A guarded variant's answers to a training prompt set (a produced dataset's rows): one job per prompt set and
# protocol, apart from the evaluation's, so that editing training prompts reselects no evaluation answer.
rule select_guarded_training:
    input:
        unpack(
            lambda wildcards: TARGETS.selection_inputs(
                wildcards.variant, wildcards.probe, wildcards.protocol
            )
        ),
    output:
        generations=TARGETS.generations("{probe}", "{protocol}", "{variant}"),
        selections=TARGETS.selection("{probe}", "{protocol}", "{variant}"),
    log:
        "logs/select/{probe}/{protocol}/{variant}.log",
    wildcard_constraints:
        probe=TARGETS.training_probe_pattern(),
        variant=TARGETS.name_pattern(generated=True, guarded=True),
    conda:
        "../../envs/score.yaml"
    threads: threads_for("score")
    resources:
        **resources_for("score"),
    params:
        settings=lambda wildcards: STUDY.selection_hash(wildcards.variant),
    script:
        "../scripts/select_guarded.py"
