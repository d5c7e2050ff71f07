"""Benchmark: `make demo`'s workflow at two commits, side by side in one run on this machine.

Each commit is checked out into a scratch worktree and runs the demo from nothing (`snakemake --cores N`, what
`make demo` runs, with this checkout's virtual environment and `VLLM_CPU_KVCACHE_SPACE` as the Makefile sets it),
one after the other. It prints each run's wall time, its generate jobs and engine starts (from the generate
logs), the ratio of the wall times, and how many of the demo's continuations differ between the two runs:

    python workflow/benchmarks/demo_time.py BEFORE [AFTER]   # commits; AFTER defaults to HEAD
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_demo(commit: str, scratch: Path, cores: int) -> dict:
    tree = scratch / commit
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), commit], check=True,
                   capture_output=True)
    try:
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
        start = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "snakemake", "--cores", str(cores)], cwd=tree, env=env,
                             capture_output=True, text=True)
        wall = time.perf_counter() - start
        if run.returncode != 0:
            raise SystemExit(f"the demo at {commit} failed:\n{run.stderr[-4000:]}")
        logs = list((tree / "logs/generate").rglob("*.log"))
        # vLLM logs this once per engine start
        starts = sum(len(re.findall(r"Loading weights took", p.read_text(errors="replace")))
                     for p in logs)
        return {"commit": commit, "wall_s": wall, "generate_jobs": len(logs), "engine_starts": starts,
                "continuations": continuations(tree / "results/generations")}
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)


def continuations(directory: Path) -> dict[tuple, str]:
    """Every continuation the run wrote, by (probe set, protocol, variant, prompt, sample)."""
    import pandas as pd

    found = {}
    for path in directory.glob("*/*/*.parquet"):  # <probe>/<protocol>/<variant>.parquet (not the jobs' parts)
        table = pd.read_parquet(path, columns=["prompt_id", "sample", "continuation"])
        probe, protocol, variant = path.parts[-3], path.parts[-2], path.stem
        for prompt_id, sample, text in table.itertuples(index=False):
            found[probe, protocol, variant, prompt_id, sample] = text
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before")
    parser.add_argument("after", nargs="?", default="HEAD")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    commits = [subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", c], check=True, capture_output=True,
                              text=True).stdout.strip() for c in (args.before, args.after)]
    with tempfile.TemporaryDirectory(prefix="finetox-demo-time-") as scratch:
        results = [run_demo(commit, Path(scratch), args.cores) for commit in commits]
    print(f"{'commit':<10} {'wall s':>8} {'generate jobs':>14} {'engine starts':>14}")
    for r in results:
        print(f"{r['commit']:<10} {r['wall_s']:>8.0f} {r['generate_jobs']:>14} {r['engine_starts']:>14}")
    print(f"after / before wall time: {results[1]['wall_s'] / results[0]['wall_s']:.2f}")
    before, after = (r["continuations"] for r in results)
    differ = sum(before[key] != after.get(key) for key in before)
    print(f"continuations: {len(before)} before, {len(after)} after, {differ} differ"
          + ("" if before.keys() == after.keys() else " (not the same keys)"))


if __name__ == "__main__":
    main()
