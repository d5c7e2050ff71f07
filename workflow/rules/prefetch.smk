rule prefetch:
    log:
        "logs/prefetch.log",
    conda:
        "../../envs/score.yaml"
    threads: 1
    script:
        "../scripts/prefetch.py"
