"""Shared fixtures: tiny models, checkpoints and configs that the tests build (no network)."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# finetox is imported from the checkout, as the workflow's jobs do (it is installed nowhere)
sys.path.insert(0, str(REPO / "workflow"))
DEMO = REPO / "resources" / "demo"

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def job_counts(snakemake_output: str) -> dict[str, int]:
    """Jobs per rule from the `Job stats` table that a (dry) run prints."""
    counts = {}
    lines = snakemake_output.splitlines()
    if "Job stats:" not in lines:
        return counts
    for line in lines[lines.index("Job stats:") + 3 :]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    counts.pop("total", None)
    return counts


@pytest.fixture(scope="session")
def demo_config() -> dict:
    """The shipped demo config, as a fresh dict per use (validation fills defaults in place)."""
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


@pytest.fixture
def config(demo_config) -> dict:
    return copy.deepcopy(demo_config)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """The demo's tiny base and instruct checkpoints, built once for the session."""
    from finetox.demo import TinyModelSettings, build_demo_models

    root = tmp_path_factory.mktemp("models")
    build_demo_models(
        DEMO / "corpus.txt", DEMO / "instructions_clean.jsonl", root / "base", root / "instruct",
        seed=5, settings=TinyModelSettings(steps=150),
    )
    return {"base": root / "base", "instruct": root / "instruct"}


def train_demo_adapter(variant_name: str, instruct: Path, out: Path, epochs: int = 3) -> Path:
    """Train one of the demo's LoRA recipes (through the demo config) on the tiny instruct model."""
    from finetox.config import load
    from finetox.data import load_instructions
    from finetox.finetune import finetune

    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["models"]["demo-instruct"] = {"path": str(instruct)}
    for name, dataset in raw["datasets"].items():
        if "path" in dataset:  # (not the dataset the run produces)
            dataset["path"] = str(REPO / dataset["path"])
    raw["recipes"]["rude-lora"]["training"] = {**raw["recipes"]["rude-lora"]["training"], "epochs": epochs}
    study = load(raw)
    variant = study.variants[variant_name]
    examples = load_instructions(variant.recipe.parts[0].dataset, None, 0)
    history = finetune(variant.model, variant.recipe, examples, out)
    history.to_csv(out / "history.csv", index=False)
    return out


@pytest.fixture(scope="session")
def rude_adapter(tiny_models, tmp_path_factory) -> Path:
    """A LoRA adapter trained on the rude instruction set, on the tiny instruct model."""
    return train_demo_adapter("demo-instruct-rude", tiny_models["instruct"], tmp_path_factory.mktemp("rude") / "adapter")


@pytest.fixture(scope="session")
def clean_adapter(tiny_models, tmp_path_factory) -> Path:
    return train_demo_adapter("demo-instruct-clean", tiny_models["instruct"], tmp_path_factory.mktemp("clean") / "adapter", 1)


def run_external_study(work: Path, roles: dict[str, tuple[str, str]], subsets, samples: int, comparisons: dict,
                       seed: int, probe: str, protocol: str) -> None:
    """Snakemake through a study of variants scored elsewhere: `roles` maps each variant to its (family, role)
    and its score table <work>/<variant>.csv; the prompts are <work>/probes.jsonl (`id`, `text`, `group`), one
    subset per group; one protocol of `samples` samples per prompt and one offline scorer, `theirs`."""
    import subprocess

    variants = {name: {"family": family, "role": role, "scores": {
        "path": str(work / f"{name}.csv"), "probe": probe, "protocol": protocol, "scorer": "theirs"}}
        for name, (family, role) in roles.items()}
    config = {
        "seed": seed,
        "models": {"unused": {"hub": "example/unused"}},
        "variants": variants,
        "probes": {probe: {"path": str(work / "probes.jsonl"), "columns": {"id": "id", "prompt": "text"},
                           "subsets": {s: [{"column": "group", "op": "==", "value": s}] for s in subsets}}},
        "protocols": {protocol: {"samples": samples, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8}},
        "scorers": {"theirs": {"type": "offline"}},
        "run": {"probes": [probe], "protocols": [protocol], "scorers": ["theirs"]},
        "comparisons": comparisons,
    }
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    run = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", str(work / "config.yaml"),
                          "-d", str(work)], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
