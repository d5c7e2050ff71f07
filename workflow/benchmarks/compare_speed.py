"""Benchmark: the cost of the rate comparison as the number of continuations grows.

Prints, measured side by side in one run, the time of the aggregated binomial fit (what the compare
stage does: one row per variant x subset with counts) and of a per-continuation Bernoulli fit of the
same data, at 10k, 100k and 1M continuations, and the compare stage's time for 20 comparisons.

    python workflow/benchmarks/compare_speed.py [--bernoulli-max 100000]

The Bernoulli fit grows with the data; past --bernoulli-max continuations it is skipped (it takes
many minutes at 1M on 2 cores) and the line says so.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's finetox

from finetox.compare import FitSettings, compare_rates, fit_rates
from finetox.config import Comparison

SETTINGS = FitSettings(hdi_prob=0.95, prior="normal", prior_sigma=1.5, rope=0.01, draws=1000, tune=1000, chains=2, seed=1)


def timed(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def bernoulli_fit(rows: pd.DataFrame):
    import bambi as bmb

    model = bmb.Model("toxic ~ 0 + cell", rows, family="bernoulli",
                      priors={"cell": bmb.Prior("Normal", mu=0, sigma=SETTINGS.prior_sigma)})
    return model.fit(draws=SETTINGS.draws, tune=SETTINGS.tune, chains=SETTINGS.chains, cores=1,
                     random_seed=SETTINGS.seed, progressbar=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bernoulli-max", type=int, default=100_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rates = {"a::toxic": 0.05, "b::toxic": 0.08}
    # warm the compiler caches so that neither side pays for the first compilation
    fit_rates(pd.DataFrame({"variant": ["a", "b"], "subset": ["toxic"] * 2, "n": [10, 10], "toxic": [1, 2]}), SETTINGS)
    print(f"{'continuations':>14} {'binomial (s)':>13} {'bernoulli (s)':>14} {'ratio':>7}")
    for total in (10_000, 100_000, 1_000_000):
        per_cell = total // len(rates)
        toxic = {cell: rng.binomial(1, p, per_cell) for cell, p in rates.items()}
        counts = pd.DataFrame({"variant": [c.split("::")[0] for c in toxic], "subset": "toxic",
                               "n": per_cell, "toxic": [int(v.sum()) for v in toxic.values()]})
        binomial = timed(lambda: fit_rates(counts, SETTINGS))
        if total <= args.bernoulli_max:
            rows = pd.DataFrame({"cell": np.repeat(list(toxic), per_cell), "toxic": np.concatenate(list(toxic.values()))})
            bernoulli = timed(lambda: bernoulli_fit(rows))
            print(f"{total:>14,} {binomial:>13.1f} {bernoulli:>14.1f} {bernoulli / binomial:>7.1f}")
        else:
            print(f"{total:>14,} {binomial:>13.1f} {'skipped':>14} {'':>7}")

    # the compare stage: 20 comparisons (10 families: base->instruct, instruct->fine-tuned), 3 subsets each
    variants, comparisons = [], []
    for family in range(10):
        base, instruct, tuned = f"f{family}-base", f"f{family}-instruct", f"f{family}-tuned"
        variants += [base, instruct, tuned]
        comparisons += [Comparison(f"{base}_vs_{instruct}", "base_vs_instruct", base, instruct),
                        Comparison(f"{instruct}_vs_{tuned}", "instruct_vs_finetuned", instruct, tuned)]
    counts = pd.DataFrame([
        {"variant": v, "subset": s, "n": n, "toxic": int(rng.binomial(n, 0.03)), "unit": "continuation"}
        for v in variants for s, n in (("toxic", 50_000), ("nontoxic", 50_000), ("all", 100_000))
    ])
    seconds = timed(lambda: compare_rates(counts, comparisons, SETTINGS))
    print(f"compare stage, {len(comparisons)} comparisons x 3 subsets "
          f"({int(counts[counts['subset'] == 'all']['n'].sum()):,} continuations): {seconds:.1f} s")


if __name__ == "__main__":
    main()
