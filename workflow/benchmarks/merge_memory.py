"""Benchmark: the memory and time of merge_generations at the study's scale.

Writes a variant's continuations as `--jobs` generate-job parts (synthetic text of realistic length: a 12-word
prompt, its rendered model input, a 20-token continuation) and runs the merge_generations stage on them in a
process of its own, printing its peak resident memory and wall time:

    python workflow/benchmarks/merge_memory.py [--rows 2475000 --jobs 4]

The default is all of RealToxicityPrompts (99k prompts) x 25 samples: the largest table one merge job reads.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's finetox


def write_parts(root: Path, rows: int, jobs: int, samples: int = 25) -> list[str]:
    import numpy as np
    import pandas as pd

    from finetox import tables
    from finetox.paths import Targets

    rng = np.random.default_rng(0)
    words = np.array("the harbour market museum garden old library chess club weather stupid idiot and so on".split())
    prompts = rows // samples
    dirs = []
    for job, ids in enumerate(np.array_split(np.arange(prompts), jobs)):
        text = [" ".join(rng.choice(words, 12)) for _ in ids]
        continuation = [" ".join(rng.choice(words, 16)) for _ in range(len(ids) * samples)]
        part = pd.DataFrame({
            "prompt_id": np.repeat([f"{i:07d}.txt" for i in ids], samples), "subset": "all", "variant": "v",
            "sample": np.tile(np.arange(samples), len(ids)), "prompt": np.repeat(text, samples),
            "model_input": np.repeat(text, samples), "continuation": continuation, "prompt_tokens": 14,
            "continuation_tokens": 20, "finish_reason": "length", "protocol": "rtp", "prompt_format": "raw",
            "samples": samples, "temperature": 1.0, "top_p": 0.9, "max_new_tokens": 20, "seed": 1,
            "backend": "vllm",
        })
        shard = root / "shards" / "m" / str(job)
        tables.write_parquet(part, Targets.shard_part(str(shard), "rtp", "rtp", "v"), "generations", {"stages": {}})
        dirs.append(str(shard))
    return dirs


def merge(spec: str) -> None:
    import json

    from finetox.config import load
    from finetox.stages import merge_generations

    spec = json.loads(Path(spec).read_text())
    merge_generations(load(spec["config"]), "rtp", "rtp", "v", spec["dirs"], spec["output"])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=99_000 * 25, help="continuations of the variant")
    parser.add_argument("--jobs", type=int, default=4, help="generate jobs holding parts of them")
    parser.add_argument("--merge", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.merge:
        return merge(args.merge)

    import json

    import yaml

    root = Path(tempfile.mkdtemp(prefix="finetox-merge-"))
    dirs = write_parts(root, args.rows, args.jobs)
    repo = Path(__file__).resolve().parents[2]
    config = yaml.safe_load((repo / "config/config.yaml").read_text())
    for table in (*config["datasets"].values(), *config["probes"].values()):
        table["path"] = str(repo / table["path"])
    spec = root / "spec.json"
    spec.write_text(json.dumps({"config": config, "dirs": dirs, "output": str(root / "merged.parquet")}))
    start = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--merge", str(spec)], check=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    size = (root / "merged.parquet").stat().st_size / 2**20
    print(f"merge_generations of {args.rows:,} continuations from {args.jobs} jobs: {seconds:.1f} s, "
          f"peak memory {peak:,.0f} MiB, merged table {size:,.0f} MiB on disk")


if __name__ == "__main__":
    main()
