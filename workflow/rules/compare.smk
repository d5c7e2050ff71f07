rule compare:
    input:
        prompts=lambda wildcards: [
            TARGETS.prompt_metrics(
                wildcards.probe, wildcards.protocol, wildcards.scorer, v
            )
            for v in TARGETS.compared_variants(**wildcards)
        ],
    output:
        table=TARGETS.comparisons("{probe}", "{protocol}", "{scorer}"),
        posterior=TARGETS.comparisons("{probe}", "{protocol}", "{scorer}", "nc"),
        pooled=TARGETS.comparisons(
            "{probe}", "{protocol}", "{scorer}", analysis="pooled"
        ),
    log:
        "logs/compare/{probe}/{protocol}/{scorer}.log",
    conda:
        "../../envs/analysis.yaml"
    threads: threads_for("compare")
    resources:
        **resources_for("compare"),
    params:
        comparisons=lambda wildcards: repr(TARGETS.comparisons_in(**wildcards)),
        settings=STUDY.comparisons_hash(),
        seed=STUDY.seed,
        # (a string, not a dict: Snakemake compares a dict param's items in order, and reordering recipes
        # in the config must rerun nothing)
        pools=" ".join(
            f"{name}={recipe.pool}" for name, recipe in sorted(STUDY.recipes.items())
        ),
    script:
        "../scripts/compare.py"


rule best:
    input:
        prompts=lambda wildcards: [
            TARGETS.prompt_metrics(
                wildcards.probe, wildcards.protocol, wildcards.scorer, v
            )
            for v in TARGETS.compared_variants(**wildcards)
        ],
    output:
        table=TARGETS.comparisons("{probe}", "{protocol}", "{scorer}", analysis="best"),
        posterior=TARGETS.comparisons("{probe}", "{protocol}", "{scorer}", "nc", "best"),
    log:
        "logs/best/{probe}/{protocol}/{scorer}.log",
    conda:
        "../../envs/analysis.yaml"
    threads: threads_for("compare")
    resources:
        **resources_for("compare"),
    params:
        comparisons=lambda wildcards: repr(TARGETS.comparisons_in(**wildcards)),
        settings=STUDY.comparisons_hash(),
        seed=STUDY.seed,
    script:
        "../scripts/compare.py"


rule comparisons_table:
    input:
        rates=TARGETS.all_comparisons(),
        best=TARGETS.all_comparisons("best"),
    output:
        report(
            TARGETS.COMPARISONS_TABLE,
            caption="../report/comparisons.rst",
            category="Tables",
        ),
    log:
        "logs/tables/comparisons.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    script:
        "../scripts/comparisons_table.py"


rule pooled_table:
    input:
        TARGETS.all_comparisons("pooled"),
    output:
        report(
            TARGETS.POOLED_TABLE,
            caption="../report/pooled.rst",
            category="Tables",
        ),
    log:
        "logs/tables/pooled.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    params:
        schema="pooled",
    script:
        "../scripts/gather.py"
