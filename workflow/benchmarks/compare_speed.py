"""Benchmark: the cost of the compare stage, its exact verdicts and its pooled estimate.

Prints the time of the exact verdicts (finetox.compare.compare_rates: no sampler) for 20 comparisons of 3 subsets
at 1,000 and 10,000 prompts per subset, and the time of one pool's hierarchical fit (finetox.pooling, bambi) with
2, 4 and 8 comparisons, under each sampler that is installed (nutpie compiles the model with numba, then samples
in native code; PyMC's own NUTS compiles C and steps in Python). A compare job fits one model per pool: a kind (and
recipe pool) x subset.

    python workflow/benchmarks/compare_speed.py [--samplers nutpie pymc]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's finetox

from finetox import pooling  # noqa: E402
from finetox.compare import FitSettings, compare_rates  # noqa: E402
from finetox.design import Comparison  # noqa: E402
from finetox.decision import Rope  # noqa: E402

SETTINGS = FitSettings(hdi_prob=0.95, prior="uniform", rope=Rope("ratio", 1.25), draws=1000, tune=1000, chains=2,
                       seed=1)


def timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def exact_verdicts(rng: np.random.Generator, per_subset: int) -> float:
    """20 comparisons (10 families: base -> instruct, instruct -> fine-tuned), 3 subsets each."""
    variants, comparisons = [], []
    for family in range(10):
        base, instruct, tuned = f"f{family}-base", f"f{family}-instruct", f"f{family}-tuned"
        variants += [base, instruct, tuned]
        comparisons += [Comparison(f"{base}_vs_{instruct}", "base_vs_instruct", base, instruct),
                        Comparison(f"{instruct}_vs_{tuned}", "instruct_vs_finetuned", instruct, tuned)]
    frames = []
    for variant in variants:
        for subset in ("toxic", "nontoxic"):
            frames.append(pd.DataFrame({"variant": variant, "subset": subset, "samples": 1,
                                        "prompt_id": [f"{subset}-{i}" for i in range(per_subset)],
                                        "toxic": rng.random(per_subset) < 0.03}))
    prompts = pd.concat(frames, ignore_index=True)
    prompts = pd.concat([prompts, prompts.assign(subset="all")], ignore_index=True)
    seconds, _ = timed(lambda: compare_rates(prompts, comparisons, SETTINGS))
    return seconds


def pool_rows(rng: np.random.Generator, comparisons: int) -> tuple[pd.DataFrame, dict]:
    """One pool: each comparison its own family and baseline, 1,000 prompts per variant, a true odds ratio ~1.5."""
    base = rng.uniform(0.01, 0.05, comparisons)
    treated = 1 / (1 + np.exp(-(np.log(base / (1 - base)) + rng.normal(np.log(1.5), 0.3, comparisons))))
    names = [f"c{j}" for j in range(comparisons)]
    rows = pd.DataFrame({"comparison": names, "subset": "all", "baseline": [f"b{j}" for j in range(comparisons)],
                         "treatment": [f"t{j}" for j in range(comparisons)], "n_baseline": 1000,
                         "toxic_baseline": rng.binomial(1000, base), "n_treatment": 1000,
                         "toxic_treatment": rng.binomial(1000, treated), "unit": "continuation"})
    return rows, {name: pooling.Member("kind", "kind", f"family{j}") for j, name in enumerate(names)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samplers", nargs="+", default=["nutpie", "pymc"])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for per_subset in (1_000, 10_000):
        print(f"exact verdicts, 20 comparisons x 3 subsets, {per_subset:,} prompts per subset: "
              f"{exact_verdicts(rng, per_subset):.2f} s", flush=True)
    samplers = [s for s in args.samplers if s == "pymc" or importlib.util.find_spec(s)]
    pooling.pooled_estimates(*pool_rows(rng, 2), SETTINGS)  # warm the compiler caches (PyTensor's C)
    print(f"{'comparisons':>12} {'sampler':>8} {'seconds':>8} {'status':>8} {'ess_bulk':>9} {'divergences':>12}")
    for comparisons in (2, 4, 8):
        rows, members = pool_rows(rng, comparisons)
        for sampler in samplers:
            pooling.fastest_sampler = lambda sampler=sampler: sampler  # the benchmark picks; the stage takes the fastest
            seconds, (out, _) = timed(lambda: pooling.pooled_estimates(rows, members, SETTINGS))
            row = out.iloc[0]
            print(f"{comparisons:>12} {sampler:>8} {seconds:>8.1f} {row['status']:>8} {row['ess_bulk']:>9.0f} "
                  f"{row['divergences']:>12.0f}", flush=True)


if __name__ == "__main__":
    main()
