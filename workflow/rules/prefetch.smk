rule prefetch:
    log:
        "logs/prefetch.log",
    conda:
        "../../envs/score.yaml"
    threads: 1
    params:
        # not an output: a rule with none runs every time it is asked for, as a fetch should
        record="results/hub/prefetch.json",
    script:
        "../scripts/prefetch.py"
