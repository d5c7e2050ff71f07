# One job per scorer and generated variant: the scorer loads once and scores the variant's tables of every
# probe set x protocol it answers and the scorer scores. A rule's outputs cannot depend on a wildcard's value, so
# where variants answer different probe sets (probes.<name>.variants), or scorers score different ones
# (scorers.<name>.probes), each class of them is a rule: `score` for those that take every probe set of the run,
# score_2, score_3, ... for the others.
for index, (runs, scorers, variants) in enumerate(TARGETS.score_classes()):

    rule:
        name:
            "score" if index == 0 else f"score_{index + 1}"
        input:
            generations=TARGETS.variant_tables("{variant}", runs=runs),
            # a scorer's local checkpoint (the demo's classifier), so that the rule that builds it runs first
            scorer=lambda wildcards: list(
                TARGETS.scorer_inputs(wildcards.scorer).values()
            ),
        output:
            TARGETS.variant_tables("{variant}", "{scorer}", runs=runs),
        log:
            "logs/score/{scorer}/{variant}.log",
        wildcard_constraints:
            variant=alternatives(variants),
            scorer=alternatives(scorers),
        conda:
            "../../envs/score.yaml"
        threads: threads_for("score")
        resources:
            **resources_for("score"),
        params:
            scorer=lambda wildcards: STUDY.digest("scorers", wildcards.scorer),
        script:
            "../scripts/score.py"


rule import_scores:
    input:
        unpack(lambda wildcards: TARGETS.external_inputs(wildcards.variant)),
    output:
        TARGETS.scores("{probe}", "{protocol}", "{scorer}", "{variant}"),
    log:
        "logs/import_scores/{probe}/{protocol}/{scorer}/{variant}.log",
    wildcard_constraints:
        variant=TARGETS.name_pattern(generated=False),
    conda:
        "../../envs/score.yaml"
    threads: 1
    params:
        source=lambda wildcards: STUDY.digest("variants", wildcards.variant),
    script:
        "../scripts/import_scores.py"
