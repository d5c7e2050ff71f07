# A produced prompt set: the prompts of a training prompt set on which a variant's answers erred, judged by a scorer
# loaded here (no engine); its probes job reads the file as a probe file, and the answers to it are generated after.
rule mistakes:
    input:
        unpack(lambda wildcards: TARGETS.mistakes_inputs(wildcards.probe)),
    output:
        TARGETS.mistakes("{probe}"),
    log:
        "logs/mistakes/{probe}.log",
    wildcard_constraints:
        probe=TARGETS.produced_prompts_pattern(),
    conda:
        "../../envs/score.yaml"
    threads: threads_for("score")
    resources:
        **resources_for("score"),
    params:
        settings=lambda wildcards: STUDY.mistakes_hash(wildcards.probe),
    script:
        "../scripts/mistakes.py"
