# One job per guarded variant: its selector loads once and chooses among the candidates of every probe set x
# protocol it answers (no generation engine); one rule per class of variants that answer the same probe sets and
# protocols (probes.<name>.variants, protocols.<name>.variants), as for rule score.
for index, (runs, variants) in enumerate(TARGETS.variant_classes(guarded=True).items()):

    rule:
        name:
            "select_guarded" if index == 0 else f"select_guarded_{index + 1}"
        input:
            unpack(lambda wildcards: TARGETS.selection_inputs(wildcards.variant)),
        output:
            generations=TARGETS.variant_tables("{variant}", runs=runs),
            selections=[
                TARGETS.selection(probe, protocol, "{variant}")
                for probe, protocol in runs
            ],
        log:
            "logs/select/{variant}.log",
        wildcard_constraints:
            variant=alternatives(variants),
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
