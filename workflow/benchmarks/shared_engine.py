"""Benchmark: one vLLM engine serving a checkpoint and all its adapters vs one engine per variant.

Prints, measured side by side in one run, the wall time of generating the same prompts for the
model alone and with each adapter, both ways, and their ratio. Run it where the study runs (a GPU
node) with the real checkpoint and adapters; with no arguments it builds the demo's tiny model and
two adapters and runs on whatever vLLM finds (the CPU build here):

    python workflow/benchmarks/shared_engine.py [--model DIR --adapter NAME=DIR ... --prompts N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's finetox

from finetox.config import ModelSource, Protocol
from finetox.generation import VLLMBackend, encode_prompts, engine_max_model_len, generate_continuations, load_tokenizer


def timed(label, function):
    start = time.perf_counter()
    result = function()
    seconds = time.perf_counter() - start
    print(f"{label:<45} {seconds:8.1f} s", flush=True)
    return seconds, result


def build_demo(root: Path) -> tuple[Path, dict[str, str]]:
    """The demo's tiny instruct model and its clean and rude adapters."""
    import yaml

    from finetox.config import load
    from finetox.data import load_instructions
    from finetox.demo import build_demo_models
    from finetox.finetune import finetune

    repo = Path(__file__).resolve().parents[2]
    build_demo_models(repo / "resources/demo/corpus.txt", repo / "resources/demo/instructions_clean.jsonl",
                      root / "base", root / "instruct", seed=1)
    raw = yaml.safe_load((repo / "config/config.yaml").read_text())
    raw["models"]["demo-instruct"] = {"path": str(root / "instruct")}
    for dataset in raw["datasets"].values():
        dataset["path"] = str(repo / dataset["path"])
    study = load(raw)
    adapters = {}
    for name in ("demo-instruct-clean", "demo-instruct-rude"):
        variant = study.variants[name]
        finetune(variant.model, variant.recipe, load_instructions(variant.recipe.datasets[0], None, 0), root / name)
        adapters[name] = str(root / name)
    return root / "instruct", adapters


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory or Hub id (default: the demo's tiny model)")
    parser.add_argument("--adapter", action="append", default=[], help="NAME=DIR of a LoRA adapter (repeatable)")
    parser.add_argument("--prompts", type=int, default=200, help="prompts per variant")
    parser.add_argument("--samples", type=int, default=5, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    args = parser.parse_args()

    scratch = tempfile.TemporaryDirectory()
    if args.model:
        model_dir, adapters = args.model, dict(a.split("=", 1) for a in args.adapter)
    else:
        model_dir, adapters = build_demo(Path(scratch.name))
    model = ModelSource("bench", str(model_dir), None, None, False, "auto", None)
    probes = pd.DataFrame({"prompt_id": [f"p{i}" for i in range(args.prompts)], "subset": "all",
                           "prompt": [f"Prompt number {i} is about the harbour and" for i in range(args.prompts)]})
    protocol = Protocol("bench", args.samples, 1.0, 0.9, args.max_new_tokens, "raw", 1)
    import torch

    # vLLM's CPU build cannot combine compiled graphs with per-request seeds: eager mode there
    settings = {"enforce_eager": not torch.cuda.is_available(), "gpu_memory_utilization": 0.3, "seed": 0}
    variants = [None, *adapters]
    tokenizer = load_tokenizer(model)
    prompts = encode_prompts(probes, "raw", tokenizer)
    max_model_len = engine_max_model_len(model, [prompts], protocol.max_new_tokens)

    def one_engine_per_variant():
        for name in variants:
            with VLLMBackend(model, {name: adapters[name]} if name else {}, settings, tokenizer, max_model_len) as engine:
                generate_continuations(prompts, "v", protocol, 1, engine, adapter=name)

    def one_shared_engine():
        with VLLMBackend(model, adapters, settings, tokenizer, max_model_len) as engine:
            for name in variants:
                generate_continuations(prompts, "v", protocol, 1, engine, adapter=name)

    print(f"{len(variants)} variants (model alone + {len(adapters)} adapters), {args.prompts} prompts x "
          f"{args.samples} samples x {args.max_new_tokens} tokens each")
    separate, _ = timed("one engine per variant", one_engine_per_variant)
    shared, _ = timed("one engine for the checkpoint and its adapters", one_shared_engine)
    print(f"ratio (per-variant / shared): {separate / shared:.2f}")


if __name__ == "__main__":
    main()
