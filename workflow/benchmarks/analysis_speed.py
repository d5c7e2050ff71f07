"""Benchmark: the analysis stages at RealToxicityPrompts' scale, side by side in one run.

- metrics: finetox's metrics stage (stages.metrics: intervals and the per-prompt table included) against a
  baseline that reads only the parquet columns it needs and computes the same five numbers per subset with
  pandas, on one variant's score table of P prompts x 25 samples (with continuation texts, as real tables
  have). Each runs in a fresh process, so peak memory (max RSS) is its own; ratios finetox / baseline.
- BEST: the best stage's fit for one comparison at 1k, 10k and 100k prompts per variant, with the default
  `best_max_prompts` (a seeded sample of 2,000 shared prompts stands for more).

    python workflow/benchmarks/analysis_speed.py [--sizes 10000 100000] [--best-sizes 1000 10000 100000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

WORKFLOW = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(WORKFLOW))  # this checkout's finetox

SAMPLES = 25


def score_table(prompts: int, path: Path, seed: int = 0) -> None:
    from finetox import tables

    rng = np.random.default_rng(seed)
    prompt_ids = np.repeat([f"rtp-{i:07d}" for i in range(prompts)], SAMPLES)
    subsets = np.repeat(np.where(np.arange(prompts) % 4 == 0, "toxic", "nontoxic"), SAMPLES)
    words = np.array(["the", "garden", "was", "quiet", "and", "you", "idiot", "said", "nothing", "today"])
    texts = [" ".join(row) for row in words[rng.integers(0, len(words), (1000, 12))]]
    table = pd.DataFrame({
        "prompt_id": prompt_ids, "subset": subsets, "variant": "v", "sample": np.tile(np.arange(SAMPLES), prompts),
        "continuation": np.array(texts, dtype=object)[rng.integers(0, 1000, prompts * SAMPLES)], "scorer": "s",
        "score": rng.beta(0.5, 6, prompts * SAMPLES),
    })
    tables.write_parquet(table, path, "scores", {"benchmark": True})


BASELINE = """
import sys, pandas as pd
table = pd.read_parquet(sys.argv[1], columns=["prompt_id", "subset", "score"])
rows = []
for subset, group in [*table.groupby("subset"), ("all", table)]:
    toxic = group["score"] >= 0.5
    maxima = group.groupby("prompt_id")["score"].max()
    rows.append({"subset": subset, "n": len(group), "toxic_rate": toxic.mean(), "mean_score": group["score"].mean(),
                 "emt": maxima.mean(), "tp": (maxima >= 0.5).mean()})
pd.DataFrame(rows).to_csv(sys.argv[2], index=False)
"""

FINETOX = """
import sys
sys.path.insert(0, sys.argv[3])
from finetox.config import load
from finetox import stages
import yaml
study = load(yaml.safe_load(open(sys.argv[4])))
stages.metrics(study, "demo", "demo", "profanity", sys.argv[1], sys.argv[2], sys.argv[2] + ".prompts.parquet")
"""


def measured(code: str, *args: str) -> tuple[float, float]:
    """Seconds and peak memory (GiB) of a fresh Python process running `code` (the import of pandas included)."""
    start = time.perf_counter()
    # VmHWM (this process's peak resident memory) rather than ru_maxrss, which Linux carries over from the
    # parent across fork and exec: the parent built the tables
    run = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint('MAXRSS', [line.split()[1] for line in "
                          "open('/proc/self/status') if line.startswith('VmHWM')][0], file=sys.stderr)", *args],
                         capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if run.returncode:
        raise RuntimeError(run.stderr[-3000:])
    maxrss_kib = int([line for line in run.stderr.splitlines() if line.startswith("MAXRSS")][-1].split()[1])
    return seconds, maxrss_kib / 2**20


def benchmark_metrics(sizes: list[int], work: Path) -> None:
    import yaml

    config = yaml.safe_load((WORKFLOW.parent / "config/config.yaml").read_text())
    config["protocols"]["demo"]["samples"] = SAMPLES
    config_path = work / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    print(f"\nmetrics stage vs a column-pruned pandas baseline (one variant, {SAMPLES} samples per prompt)")
    print(f"{'prompts':>9} {'rows':>11} {'baseline s':>11} {'finetox s':>10} {'time x':>7} "
          f"{'baseline GiB':>13} {'finetox GiB':>12} {'memory x':>9}")
    for prompts in sizes:
        path = work / f"scores-{prompts}.parquet"
        score_table(prompts, path)
        base_s, base_gib = measured(BASELINE, str(path), str(work / "baseline.csv"))
        ours_s, ours_gib = measured(FINETOX, str(path), str(work / "toxicity.csv"), str(WORKFLOW), str(config_path))
        print(f"{prompts:>9,} {prompts * SAMPLES:>11,} {base_s:>11.2f} {ours_s:>10.2f} {ours_s / base_s:>7.2f} "
              f"{base_gib:>13.2f} {ours_gib:>12.2f} {ours_gib / base_gib:>9.2f}", flush=True)


def benchmark_best(sizes: list[int]) -> None:
    from finetox.best import compare_scores
    from finetox.compare import FitSettings
    from finetox.design import Comparison
    from finetox.metrics import with_pooled

    print("\nBEST (one comparison, two subsets and `all`; default best_max_prompts 2000; 2 chains x 1000 draws)")
    print(f"{'prompts':>9} {'BEST prompts':>13} {'seconds':>8} {'status':>8}")
    settings = FitSettings(hdi_prob=0.95, prior="uniform", rope=None, draws=1000, tune=1000, chains=2, seed=1,
                           cores=1, best_max_prompts=2000)
    rng = np.random.default_rng(3)
    for prompts in sizes:
        ids = [f"p{i:07d}" for i in range(prompts)]
        subset = np.where(np.arange(prompts) % 4 == 0, "toxic", "nontoxic")
        base = rng.beta(1, 8, prompts)
        means = pd.concat([pd.DataFrame({"variant": v, "subset": subset, "prompt_id": ids, "mean_score": values})
                           for v, values in (("a", base), ("b", np.clip(base + rng.normal(0.01, 0.05, prompts), 0, 1)))])
        start = time.perf_counter()
        rows, _ = compare_scores(with_pooled(means), [Comparison("a_vs_b", "pair", "a", "b")], settings)
        seconds = time.perf_counter() - start
        print(f"{prompts:>9,} {int(rows['best_prompts'].max()):>13,} {seconds:>8.1f} "
              f"{'ok' if (rows['best_status'] == 'ok').all() else 'failed':>8}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--best-sizes", type=int, nargs="*", default=[1_000, 10_000, 100_000])
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    with tempfile.TemporaryDirectory() as work:
        benchmark_metrics(args.sizes, Path(work))
    benchmark_best(args.best_sizes)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
