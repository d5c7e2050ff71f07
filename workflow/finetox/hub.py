"""The Hugging Face Hub: what a study needs from it, whether the local cache has it, and fetching it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from finetox.config import Study

# Detoxify loads its weights from GitHub releases into torch's hub cache, and the transformer's
# config and tokenizer from the Hub under these names (see detoxify.detoxify.MODEL_URLS).
DETOXIFY_HUB_MODELS = {"original": "bert-base-uncased", "unbiased": "roberta-base", "multilingual": "xlm-roberta-base"}


class MissingFromCache(RuntimeError):
    """Offline, and the cache lacks something the study needs."""


@dataclass(frozen=True)
class HubItem:
    repo_id: str
    repo_type: str  # "model" or "dataset"
    revision: str | None
    allow_patterns: tuple[str, ...] | None
    needed_by: str

    def __str__(self):
        return f"{self.repo_type} {self.repo_id}" + (f"@{self.revision}" if self.revision else "")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def snapshot(item: HubItem, local_only: bool | None = None) -> Path:
    """The local directory of a Hub repository (downloaded unless offline or `local_only`)."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(
        item.repo_id, repo_type=item.repo_type, revision=item.revision,
        allow_patterns=list(item.allow_patterns) if item.allow_patterns else None,
        local_files_only=offline() if local_only is None else local_only,
    ))


def needed(study: Study) -> list[HubItem]:
    """Every Hub model and dataset that this run's variants, probe sets and scorers load."""
    items: dict[tuple, HubItem] = {}

    def add(repo_id, repo_type, revision, patterns, needed_by):
        items.setdefault((repo_id, repo_type, revision), HubItem(repo_id, repo_type, revision, patterns, needed_by))

    for variant in study.variants.values():
        if variant.external and variant.external.source.hub:
            src = variant.external.source
            add(src.hub, "dataset", src.revision, src.files, f"variant {variant.name}")
        if variant.model and variant.model.hub:
            add(variant.model.hub, "model", variant.model.revision, None, f"variant {variant.name}")
        if variant.recipe and variant.recipe.dataset.hub:
            d = variant.recipe.dataset
            add(d.hub, "dataset", d.revision, d.files, f"recipe {variant.recipe.name}")
    for name in study.run_probes:
        source = study.probes[name].source
        if source.hub:
            add(source.hub, "dataset", source.revision, source.files, f"probe set {name}")
    for name in study.run_scorers:
        scorer = study.scorers[name]
        if scorer.type == "hf-classifier" and not Path(scorer.options["model"]).exists():
            add(scorer.options["model"], "model", scorer.options.get("revision"), None, f"scorer {name}")
        if scorer.type == "detoxify" and not scorer.options.get("config_dir"):
            add(DETOXIFY_HUB_MODELS[scorer.options["model_type"]], "model", None, None, f"scorer {name}")
    return list(items.values())


def _detoxify_checkpoints(study: Study) -> list[tuple[str, Path]]:
    """Detoxify checkpoints that would be downloaded from GitHub (scorers without a local checkpoint)."""
    import torch
    from detoxify.detoxify import MODEL_URLS

    out = []
    for name in study.run_scorers:
        scorer = study.scorers[name]
        if scorer.type == "detoxify" and not scorer.options.get("checkpoint"):
            url = MODEL_URLS[scorer.options["model_type"]]
            out.append((name, Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1]))
    return out


def missing(study: Study) -> list[str]:
    """What the local caches lack, one line each (empty when a run can go offline)."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    lines = []
    for item in needed(study):
        try:
            snapshot(item, local_only=True)
        except (LocalEntryNotFoundError, FileNotFoundError, OSError):
            lines.append(f"{item} (for {item.needed_by})")
    try:
        checkpoints = _detoxify_checkpoints(study)
    except ImportError:
        checkpoints = []  # detoxify lives in the score env; the score job reports it if it is missing
    lines += [f"Detoxify checkpoint {path} (for scorer {name})" for name, path in checkpoints if not path.exists()]
    return lines


def preflight(study: Study, configfiles: list[str]) -> None:
    """Offline (HF_HUB_OFFLINE=1), fail before any job starts when the cache lacks a model or dataset."""
    if not offline():
        return
    absent = missing(study)
    if absent:
        given = " ".join(f"--configfile {c}" for c in configfiles)
        raise MissingFromCache(
            "HF_HUB_OFFLINE=1, and the local cache lacks what this run needs:\n  " + "\n  ".join(absent)
            + f"\nFetch everything on a machine with internet (a login node), with the same HF_HOME and "
            f"without HF_HUB_OFFLINE:\n  snakemake prefetch {given} --cores 1   (add --sdm conda to run it in its conda env)"
        )


def prefetch(study: Study) -> list[str]:
    """Download every Hub model and dataset (and Detoxify checkpoint) the study needs into the caches."""
    fetched = []
    for item in needed(study):
        fetched.append(f"{item} -> {snapshot(item, local_only=False)}")
    for name, path in _detoxify_checkpoints(study):
        from detoxify import Detoxify

        Detoxify(study.scorers[name].options["model_type"])
        fetched.append(f"Detoxify checkpoint -> {path}")
    return fetched
