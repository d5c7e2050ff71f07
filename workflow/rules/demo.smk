rule demo_models:
    input:
        corpus="resources/demo/corpus.txt",
        instructions="resources/demo/instructions_clean.jsonl",
    output:
        base=directory("results/demo/models/base"),
        instruct=directory("results/demo/models/instruct"),
        loss="results/demo/models/loss.csv",
    log:
        "logs/demo/models.log",
    conda:
        "../../envs/train.yaml"
    threads: threads_for("demo_models")
    resources:
        **resources_for("demo_models"),
    params:
        seed=STUDY.seed,
    script:
        "../scripts/demo_models.py"
