"""Benchmark: generation jobs laid out as before (one engine per probe set x protocol x checkpoint) and as now (one
engine per checkpoint serving every probe set, protocol and adapter in chunks), side by side in one run.

For each layout it runs the real generate stage (finetox.stages.generate) on the same work and prints the engine
starts, the stage's wall time, the engine's own generation time (engine start excluded, from the jobs' closing
log lines) and their ratio, then the before/after ratio of wall times. The work is a many-variant synthetic run:
the demo's tiny instruct model alone, under another seed, and with `--adapters` LoRA adapters (random weights: the
cost of serving them, not their effect), on two probe sets (the demo's prompts) under two protocols:

    python workflow/benchmarks/generation_jobs.py [--adapters 6 --prompts 400]

The demo itself is the other measurement README reports (`make demo`, before and after, on the same machine).
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's finetox

REPO = Path(__file__).resolve().parents[2]


def random_adapter(model_dir: Path, target: Path, seed: int) -> str:
    """A LoRA adapter with random (non-zero) weights on the tiny model, saved as peft saves one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=16, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(target)
    (target / "finetox.json").write_text('{"stages": {}}')  # (a fine-tune's provenance: none here)
    return str(target)


def synthetic_config(model_dir: Path, adapters: int, prompts: int) -> dict:
    import yaml

    raw = yaml.safe_load((REPO / "config/config.yaml").read_text())
    raw["models"] = {"tiny": {"path": str(model_dir)}}
    raw["datasets"] = {name: {**d, "path": str(REPO / d["path"])} for name, d in raw["datasets"].items() if "path" in d}
    raw["recipes"] = {"clean-lora": raw["recipes"]["clean-lora"]}  # (the others train on what the demo produces)
    raw["scorers"] = {"profanity": raw["scorers"]["profanity"]}
    probe = raw["probes"]["demo"]
    probe.update(path=str(REPO / probe["path"]), sample_per_subset=prompts // 2)
    raw["probes"] = {"demo": probe, "demo-b": copy.deepcopy(probe)}
    raw["protocols"] = {"sampled": raw["protocols"]["demo"],
                        "greedy": {**raw["protocols"]["demo"], "samples": 1, "temperature": 0.0}}
    raw["variants"] = {"tiny": {"family": "tiny", "role": "instruct", "model": "tiny"},
                       "tiny-reseeded": {"family": "tiny", "role": "other", "model": "tiny", "seed": 9}}
    raw["variants"].update({f"tiny-lora-{i}": {"family": "tiny", "role": "finetuned", "model": "tiny",
                                               "recipe": "clean-lora"} for i in range(adapters)})
    raw["comparisons"] = {"pairs": [{"name": "seed", "baseline": "tiny", "treatment": "tiny-reseeded"}]}
    raw.pop("capability", None)
    raw["run"] = {"probes": ["demo", "demo-b"], "protocols": ["sampled", "greedy"], "scorers": ["profanity"]}
    raw["generation"].update(share_engine=True, tokens_per_job=None)
    return raw


def run_job(raw: dict, probes_tables: dict, adapters: dict, out: Path, log: Path) -> tuple[float, float, int]:
    """One generate job in a process of its own, as Snakemake runs it: its wall time (interpreter, imports and
    engine start included), and the engine generation time and engine starts it logged."""
    import json
    import subprocess

    spec = out.with_suffix(".json")
    spec.write_text(json.dumps({"raw": raw, "probes": probes_tables, "adapters": adapters, "out": str(out),
                                "log": str(log)}))
    start = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--job", str(spec)], check=True)
    wall = time.perf_counter() - start
    closing = re.search(r"engine starts: (\d+), engine start [\d.]+ s, engine generation ([\d.]+) s", log.read_text())
    return wall, float(closing[2]), int(closing[1])


def job(spec_path: str) -> None:
    import json

    from finetox.config import load
    from finetox.stages import generate, job_log

    spec = json.loads(Path(spec_path).read_text())
    with job_log(spec["log"]):
        generate(load(spec["raw"]), "tiny", 0, spec["probes"], spec["out"], spec["adapters"],
                 list(spec["probes"].values()))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapters", type=int, default=6, help="LoRA adapters on the checkpoint")
    parser.add_argument("--prompts", type=int, default=400, help="prompts per probe set")
    parser.add_argument("--job", help=argparse.SUPPRESS)  # (one job, in its own process)
    args = parser.parse_args()
    if args.job:
        return job(args.job)

    from finetox import tables
    from finetox.config import load
    from finetox.data import select_probes
    from finetox.demo import build_demo_models

    root = Path(tempfile.mkdtemp(prefix="finetox-bench-"))
    build_demo_models(REPO / "resources/demo/corpus.txt", REPO / "resources/demo/instructions_clean.jsonl",
                      root / "base", root / "instruct", seed=1)
    raw = synthetic_config(root / "instruct", args.adapters, args.prompts)
    study = load(raw)
    adapters = {f"tiny-lora-{i}": random_adapter(root / "instruct", root / f"lora-{i}", i) for i in range(args.adapters)}
    probes_tables = {}
    for name in study.run_probes:
        table, _ = select_probes(study.probes[name], study.seed)
        probes_tables[name] = str(root / f"{name}.parquet")
        tables.write_parquet(table[["prompt_id", "subset", "prompt"]], probes_tables[name], "probes", {})

    print(f"{len(study.variants)} variants of one checkpoint ({args.adapters} adapters), {len(probes_tables)} probe "
          f"sets x {args.prompts} prompts, protocols {', '.join(study.run_protocols)}; backend "
          f"{study.generation['backend']}", flush=True)
    layouts = {}
    # before: one job (and engine) per probe set x protocol, serving the checkpoint's variants
    before = [0.0, 0.0, 0]
    for probe in study.run_probes:
        for protocol in study.run_protocols:
            one = {**raw, "run": {**raw["run"], "probes": [probe], "protocols": [protocol]}}
            result = run_job(one, {probe: probes_tables[probe]}, adapters, root / f"before-{probe}-{protocol}",
                             root / f"before-{probe}-{protocol}.log")
            before = [a + b for a, b in zip(before, result)]
    layouts["before: an engine per probe set x protocol"] = before
    layouts["now: one engine per checkpoint"] = list(run_job(raw, probes_tables, adapters, root / "now",
                                                             root / "now.log"))
    print(f"{'layout':<45} {'engine starts':>13} {'wall s':>8} {'generation s':>13} {'wall/generation':>16}")
    for name, (wall, generation, starts) in layouts.items():
        print(f"{name:<45} {starts:>13} {wall:>8.1f} {generation:>13.1f} {wall / generation:>16.2f}")
    (before_wall, *_), (now_wall, *_) = layouts.values()
    print(f"wall time, before / now: {before_wall / now_wall:.2f}")


if __name__ == "__main__":
    main()
