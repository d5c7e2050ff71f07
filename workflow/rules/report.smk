rule report:
    input:
        toxicity=TARGETS.TOXICITY_TABLE,
        comparisons=TARGETS.COMPARISONS_TABLE,
        pooled=TARGETS.POOLED_TABLE,
        agreement=TARGETS.SCORER_AGREEMENT_TABLE,
        thresholds=TARGETS.THRESHOLD_TABLE,
        degeneration=TARGETS.DEGENERATION_TABLE,
        training=TARGETS.all_training_logs(),
        # read for the instances (the continuations behind the numbers) and the provenance section
        scores=TARGETS.all_scores(),
        prompts=list(TARGETS.score_tables(per_prompt=True).values()),
        adapters=[TARGETS.adapter(v.name) for v in STUDY.variants.values() if v.recipe],
        probes=[TARGETS.probes_table(probe) for probe in STUDY.run_probes],
        posteriors=list(TARGETS.all_posteriors().values()),
        # only when `capability` is configured (else nothing: the DAG stays as it was)
        capability=TARGETS.capability_tables(),
        capability_provenance=TARGETS.all_capability(provenance=True),
        # only when `stereotypes` is configured: [per variant, comparisons]
        stereotypes=TARGETS.stereotype_tables(),
        stereotypes_provenance=TARGETS.all_stereotypes(provenance=True),
        # only when a variant is guarded
        selection=TARGETS.selection_tables(),
        # only when the run produces prompt sets (the prompts a variant erred on)
        mistakes=TARGETS.all_mistakes(),
        # only when `calibration` is configured: its tables once labels are, else the sample's design
        calibration=TARGETS.calibration_report_inputs(),
    output:
        report(
            TARGETS.REPORT,
            caption="../report/report.rst",
            category="Report",
        ),
    log:
        "logs/report/report.log",
    conda:
        "../../envs/analysis.yaml"
    threads: threads_for("report")
    resources:
        **resources_for("report"),
    params:
        config=STUDY.digest(),
    script:
        "../scripts/report.py"
