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


# The demo's guard (a tiny causal LM that answers " unsafe" or " safe" after its chat template): the selector of
# its guarded variant.
rule demo_guard:
    input:
        rude="resources/demo/instructions_rude.jsonl",
        clean="resources/demo/instructions_clean.jsonl",
        corpus="resources/demo/corpus.txt",
    output:
        guard=directory("results/demo/models/guard"),
        loss="results/demo/models/guard_loss.csv",
    log:
        "logs/demo/guard.log",
    conda:
        "../../envs/train.yaml"
    threads: threads_for("demo_models")
    resources:
        **resources_for("demo_models"),
    params:
        seed=STUDY.seed,
    script:
        "../scripts/demo_guard.py"


# The demo's labeller: labels the exported sample by the rude fine-tune's insults (config calibration.labels).
rule demo_labels:
    input:
        TARGETS.CALIBRATION_EXPORT,
    output:
        TARGETS.DEMO_LABELS,
    log:
        "logs/demo/labels.log",
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    params:
        values=calibration_hash("labels"),
    script:
        "../scripts/demo_labels.py"


# The demo's second toxicity scorer (a tiny sequence classifier trained on its rude vs clean answers), scored by the
# hf-classifier scorer beside the profanity lexicon: where the two disagree, the report says which verdicts depend on
# the scorer.
rule demo_classifier:
    input:
        rude="resources/demo/instructions_rude.jsonl",
        clean="resources/demo/instructions_clean.jsonl",
        corpus="resources/demo/corpus.txt",
    output:
        classifier=directory("results/demo/models/classifier"),
        loss="results/demo/models/classifier_loss.csv",
    log:
        "logs/demo/classifier.log",
    conda:
        "../../envs/train.yaml"
    threads: threads_for("demo_models")
    resources:
        **resources_for("demo_models"),
    params:
        seed=STUDY.seed,
    script:
        "../scripts/demo_classifier.py"
