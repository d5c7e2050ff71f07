"""The Hugging Face Hub: what a study needs from it, whether the local cache has it, fetching just what
loading reads, and the commit each repository resolved to (for the outputs' provenance)."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import sys
import urllib.request
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from pathlib import Path

from finetox.config import MODEL_SCORERS, ModelSource, ScorerSpec, Study, TableSource

# Detoxify loads its weights from GitHub releases into torch's hub cache, and the transformer's
# config and tokenizer from the Hub under these names (see detoxify.detoxify.MODEL_URLS).
DETOXIFY_HUB_MODELS = {"original": "bert-base-uncased", "unbiased": "roberta-base", "multilingual": "xlm-roberta-base"}
# detoxify.detoxify.MODEL_URLS, kept here so that the pre-flight runs where neither torch nor detoxify is
# installed (a login node); tests/test_provenance.py checks them against the installed detoxify.
DETOXIFY_CHECKPOINT_URLS = {
    "original": "https://github.com/unitaryai/detoxify/releases/download/v0.1-alpha/toxic_original-c1212f89.ckpt",
    "unbiased": "https://github.com/unitaryai/detoxify/releases/download/v0.3-alpha/toxic_debiased-c7548aa0.ckpt",
    "multilingual": "https://github.com/unitaryai/detoxify/releases/download/v0.4-alpha/multilingual_debiased-0b549669.ckpt",
}
DETOXIFY_CHECKPOINT = "detoxify checkpoint"  # the `type` of a Detoxify checkpoint's prefetch record

# What loading a model reads from its repository besides the weights: configs (config.json,
# generation_config.json), tokenizers (tokenizer*.json, special tokens, SentencePiece *.model, tiktoken
# files, vocab/merges), chat templates.
CONFIG_AND_TOKENIZER = ("*.json", "*.model", "*.tiktoken", "vocab*.txt", "merges*.txt", "*.jinja")
COMMIT = re.compile(r"[0-9a-f]{40}")
UNPINNABLE = "Detoxify loads it by name, with no revision: give the scorer `config_dir:` (a local copy) to fix it"

class MissingFromCache(RuntimeError):
    """Offline, and the cache lacks something the study needs."""


@dataclass(frozen=True)
class HubItem:
    repo_id: str
    repo_type: str  # "model" or "dataset"
    revision: str | None
    allow_patterns: tuple[str, ...] | None  # a dataset's data files; None for a model (see loading_files)
    needed_by: str
    trust_remote_code: bool = False  # a model whose own code is loaded (its *.py are fetched too)
    weights: bool = True  # False: config and tokenizer only (Detoxify brings its own weights)
    pin_at: tuple[str, ...] = ()  # the config entries whose `revision:` pins it; none when it cannot be pinned

    def __str__(self):
        return f"{self.repo_type} {self.repo_id}" + (f"@{self.revision}" if self.revision else "")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def is_commit(revision: str | None) -> bool:
    """Whether a revision pins a repository: a full commit hash (a branch or tag can move)."""
    return bool(revision and COMMIT.fullmatch(revision))


def loading_files(repo_files: list[str], trust_remote_code: bool = False, weights: bool = True) -> list[str]:
    """The files of a model repository that transformers and vLLM read to load it: its configs, tokenizer and
    chat template (and code, with trust_remote_code) and one format of its weights: the safetensors (with
    their index) where there are any, else the PyTorch .bin (with theirs). Never GGUF, ONNX, Flax or TF
    weights, nor Meta's original checkpoint (original/, consolidated*.pth): they would double the download
    and the disk it takes."""
    # Configs and tokenizers are read from the top level; subfolders hold other formats (onnx/, coreml/).
    top = [f for f in repo_files if "/" not in f]
    patterns = CONFIG_AND_TOKENIZER + (("*.py",) if trust_remote_code else ())
    chosen = [f for f in top if any(fnmatchcase(f, p) for p in patterns) and not f.endswith(".index.json")]
    if weights:
        # Every file of the format, not only those the index names: offline, vLLM asks the cache for
        # "*.safetensors" (else "*.bin") outside original/, and huggingface_hub fails on any it lacks.
        candidates = [f for f in repo_files if not f.startswith("original/")]
        safetensors = [f for f in candidates if f.endswith(".safetensors")]
        pytorch = [f for f in candidates if f.endswith(".bin")]
        if not safetensors and not pytorch:
            raise ValueError(f"no *.safetensors nor *.bin weights in the repository (its files: {sorted(repo_files)})")
        index = "*.safetensors.index.json" if safetensors else "*.bin.index.json"
        chosen += (safetensors or pytorch) + [f for f in top if fnmatchcase(f, index)]
    return sorted(chosen)


def files_to_fetch(item: HubItem, repo_files: list[str]) -> list[str]:
    """The files of `item`'s repository that loading it reads: a dataset's files matching its patterns, or
    for a model those that loading_files chooses."""
    if item.allow_patterns is not None:
        from huggingface_hub.utils import filter_repo_objects

        return sorted(filter_repo_objects(repo_files, allow_patterns=list(item.allow_patterns)))
    try:
        return loading_files(repo_files, item.trust_remote_code, item.weights)
    except ValueError as err:
        raise ValueError(f"{item} (for {item.needed_by}): {err}") from err


def torch_hub_dir() -> Path:
    """torch.hub.get_dir() without torch: $TORCH_HOME/hub, else $XDG_CACHE_HOME/torch/hub, else ~/.cache/torch/hub."""
    torch_home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return Path(os.path.expanduser(torch_home)) / "hub"


def detoxify_checkpoint(model_type: str) -> Path:
    """Where Detoxify (torch.hub.load_state_dict_from_url) keeps the checkpoint of a model type."""
    return torch_hub_dir() / "checkpoints" / DETOXIFY_CHECKPOINT_URLS[model_type].rsplit("/", 1)[1]


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- what a job loaded, for the provenance of its outputs -----------------------------------------


def resolved_commit(repo_id: str, repo_type: str = "model", revision: str | None = None) -> str | None:
    """The commit that `revision` (default: the main branch) of a Hub repository resolves to in the local
    cache, which is what a loader that found it there loaded; None when the cache does not hold it."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    folder = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type=repo_type)
    revision = revision or constants.DEFAULT_REVISION
    ref = folder / "refs" / revision
    commit = revision if is_commit(revision) else (ref.read_text().strip() if ref.is_file() else None)
    return commit if commit and (folder / "snapshots" / commit).is_dir() else None


def hub_record(repo_id: str, repo_type: str, revision: str | None) -> dict:
    """A Hub repository as a job loaded it: the revision asked and the commit the cache resolved it to."""
    return {"hub": repo_id, "type": repo_type, "revision": revision,
            "commit": resolved_commit(repo_id, repo_type, revision)}


def path_record(path: str | Path) -> dict:
    return {"path": str(Path(path).resolve())}


def model_record(model: ModelSource) -> dict:
    """Where a checkpoint was loaded from: its local directory, or its Hub repository and commit."""
    return path_record(model.path) if model.path else hub_record(model.hub, "model", model.revision)


def table_record(source: TableSource) -> dict:
    """Where a probe set, dataset or score table was read from: its file and the file's sha256 (what was read,
    not only where), or its Hub dataset and commit."""
    if source.path:
        return {**path_record(source.path), "sha256": sha256_of(source.path)}
    return hub_record(source.hub, "dataset", source.revision)


def local_model(name: str) -> bool:
    """Whether a scorer's `model` names a local directory rather than a Hub id: it exists, or it cannot be a Hub id
    (which is `name` or `owner/name`), like results/demo/models/guard before the rule that builds it ran."""
    return Path(name).exists() or name.startswith(("/", ".", "~")) or name.count("/") >= 2


def scorer_records(spec: ScorerSpec) -> dict[str, dict]:
    """What a scorer loads: Detoxify's checkpoint (with its sha256) and its transformer's config and tokenizer,
    or a classifier's, guard's or reward model's checkpoint; nothing for the offline scorer, whose model ships
    inside its package."""
    options = spec.options
    if spec.type in MODEL_SCORERS:
        model = options["model"]
        return {"model": path_record(model) if local_model(model)
                else hub_record(model, "model", options.get("revision"))}
    if spec.type != "detoxify":
        return {}
    checkpoint = options.get("checkpoint") or detoxify_checkpoint(options["model_type"])
    records = {"checkpoint": {**path_record(checkpoint), "sha256": sha256_of(checkpoint)}}
    if options.get("config_dir"):
        records["config"] = path_record(options["config_dir"])
    elif not options.get("checkpoint"):
        records["config"] = hub_record(DETOXIFY_HUB_MODELS[options["model_type"]], "model", None)
    # else: a checkpoint of one's own names its transformer inside, and its sha256 pins that name
    return records


def snapshot(item: HubItem, local_only: bool | None = None) -> Path:
    """The local directory of a Hub repository (downloaded unless offline or `local_only`)."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(
        item.repo_id, repo_type=item.repo_type, revision=item.revision,
        allow_patterns=list(item.allow_patterns) if item.allow_patterns else None,
        local_files_only=offline() if local_only is None else local_only,
    ))


def needed(study: Study) -> list[HubItem]:
    """Every Hub model and dataset that this run's variants, probe sets, stereotype pairs and scorers load."""
    items: dict[tuple, HubItem] = {}

    def add(item: HubItem):
        key = (item.repo_id, item.repo_type, item.revision)
        seen = items.get(key)
        if seen is not None:  # one repository, several uses: fetch what each of them reads
            patterns = None if seen.allow_patterns is None or item.allow_patterns is None else _union(
                seen.allow_patterns, item.allow_patterns)
            item = replace(seen, allow_patterns=patterns, pin_at=_union(seen.pin_at, item.pin_at),
                           weights=seen.weights or item.weights,
                           trust_remote_code=seen.trust_remote_code or item.trust_remote_code)
        items[key] = item

    for variant in study.variants.values():
        if variant.external and variant.external.source.hub:
            src = variant.external.source
            add(HubItem(src.hub, "dataset", src.revision, src.files, f"variant {variant.name}",
                        pin_at=(f"variants.{variant.name}.scores",)))
        if variant.model and variant.model.hub:
            model = variant.model
            add(HubItem(model.hub, "model", model.revision, None, f"variant {variant.name}",
                        trust_remote_code=model.trust_remote_code, pin_at=(f"models.{model.name}",)))
        for d in variant.recipe.datasets if variant.recipe else ():
            if d.hub:
                add(HubItem(d.hub, "dataset", d.revision, d.files, f"recipe {variant.recipe.name}",
                            pin_at=(f"datasets.{d.name}",)))
    for name in study.generated_probes:  # (training prompt sets too)
        source = study.probes[name].source
        if source.hub:
            add(HubItem(source.hub, "dataset", source.revision, source.files, f"probe set {name}",
                        pin_at=(f"probes.{name}",)))
    source = study.stereotypes_source
    if source is not None and source.hub:
        add(HubItem(source.hub, "dataset", source.revision, source.files, "stereotypes", pin_at=("stereotypes",)))
    for name in study.used_scorers:
        scorer = study.scorers[name]
        if scorer.type in MODEL_SCORERS and not local_model(scorer.options["model"]):
            add(HubItem(scorer.options["model"], "model", scorer.options.get("revision"), None, f"scorer {name}",
                        trust_remote_code=bool(scorer.options.get("trust_remote_code")), pin_at=(f"scorers.{name}",)))
        if scorer.type == "detoxify" and not scorer.options.get("config_dir"):
            add(HubItem(DETOXIFY_HUB_MODELS[scorer.options["model_type"]], "model", None, None, f"scorer {name}",
                        weights=False))
    return list(items.values())


def _union(first: tuple[str, ...], second: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(first + second))


def _detoxify_downloads(study: Study) -> list[tuple[str, str, Path]]:
    """The Detoxify checkpoints this run downloads from GitHub (scorers without a local checkpoint), as
    (scorer, url, where torch's hub cache keeps it)."""
    downloads = []
    for name in study.used_scorers:
        spec = study.scorers[name]
        if spec.type == "detoxify" and not spec.options.get("checkpoint"):
            model_type = spec.options["model_type"]
            downloads.append((name, DETOXIFY_CHECKPOINT_URLS[model_type], detoxify_checkpoint(model_type)))
    return downloads


def cached(item: HubItem) -> bool:
    """Whether the cache holds what loading `item` reads: every file of files_to_fetch where the cache keeps
    the repository's file list (snapshot_download does), else its snapshot folder at least."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError, LocalEntryNotFoundError

    patterns = item.allow_patterns
    try:
        listing = [f.path for f in get_cached_repo_tree(item.repo_id, repo_type=item.repo_type, revision=item.revision)]
        patterns = tuple(glob.escape(f) for f in files_to_fetch(item, listing))
    except (CachedRepoTreeNotFoundError, ValueError):
        pass
    try:
        snapshot(replace(item, allow_patterns=patterns), local_only=True)
    except (LocalEntryNotFoundError, OSError):
        return False
    return True


def missing(study: Study) -> list[str]:
    """What the local caches lack, one line each (empty when a run can go offline)."""
    lines = [f"{item} (for {item.needed_by})" for item in needed(study) if not cached(item)]
    lines += [f"Detoxify checkpoint {path} (for scorer {name})" for name, _, path in _detoxify_downloads(study)
              if not path.exists()]
    return lines


def unpinned(study: Study) -> list[str]:
    """The Hub repositories this run loads that the config does not pin to a commit, one line each."""
    return [f"{item} (for {item.needed_by}): " + (f"set `revision:` in {', '.join(item.pin_at)}" if item.pin_at
                                                  else UNPINNABLE)
            for item in needed(study) if not is_commit(item.revision)]


def preflight(study: Study, configfiles: list[str]) -> None:
    """Before any job starts: warn about Hub repositories not pinned to a commit; offline (HF_HUB_OFFLINE=1),
    fail when the cache lacks a model, dataset or checkpoint the run needs."""
    loose = unpinned(study)
    if loose:
        print("finetox WARNING: not pinned to a commit, so a later run may load other weights or data:\n  "
              + "\n  ".join(loose) + "\n`snakemake prefetch` prints the commit of each, ready to paste.",
              file=sys.stderr, flush=True)
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


def prefetch(study: Study) -> list[dict]:
    """Download what loading the study's Hub models and datasets reads (files_to_fetch) and its Detoxify
    checkpoints; one record each: what was asked, the commit it resolved to (or sha256) and the files."""
    from huggingface_hub import HfApi

    api = HfApi()
    records = []
    for item in needed(study):
        commit = api.repo_info(item.repo_id, repo_type=item.repo_type, revision=item.revision).sha
        files = files_to_fetch(item, api.list_repo_files(item.repo_id, repo_type=item.repo_type, revision=commit))
        if not files:
            raise ValueError(f"{item} (for {item.needed_by}): no file matches {list(item.allow_patterns)}")
        # Fetched by the revision asked, not by the commit, so that the cache records what the branch
        # (refs/main) resolves to for the offline runs that load it by the same revision.
        fetched = snapshot(replace(item, allow_patterns=tuple(glob.escape(f) for f in files)), local_only=False).name
        if fetched != commit:
            raise RuntimeError(f"{item} moved from commit {commit} to {fetched} while it was fetched; run prefetch again")
        records.append({"repo": item.repo_id, "type": item.repo_type, "revision": item.revision, "commit": commit,
                        "files": files, "needed_by": item.needed_by, "pin_at": list(item.pin_at)})
    for name, url, path in _detoxify_downloads(study):
        if not path.exists():
            _download(url, path)
        records.append({"type": DETOXIFY_CHECKPOINT, "url": url, "path": str(path), "sha256": sha256_of(path),
                        "needed_by": f"scorer {name}"})
    return records


def _download(url: str, path: Path) -> None:
    """A URL to a file, atomically: an interrupted download leaves nothing that looks like a checkpoint."""
    from finetox.tables import atomic_path

    with atomic_path(path) as tmp, urllib.request.urlopen(url) as response, open(tmp, "wb") as out:
        for block in iter(lambda: response.read(1 << 20), b""):
            out.write(block)


def prefetch_log(records: list[dict]) -> list[str]:
    """What a prefetch fetched, one line each, then a ready-to-paste `revision:` for every repository that
    the config does not pin to a commit."""
    lines = [f"{r['type']} {r['url']} -> {r['path']} sha256 {r['sha256']} (for {r['needed_by']})"
             if r["type"] == DETOXIFY_CHECKPOINT else
             f"{r['type']} {r['repo']}@{r['revision'] or 'main'} -> commit {r['commit']}, {len(r['files'])} files "
             f"(for {r['needed_by']})" for r in records]
    loose = [r for r in records if r["type"] != DETOXIFY_CHECKPOINT and not is_commit(r["revision"])]
    if loose:
        lines += ["", "Not pinned to a commit. To load exactly what was fetched, set in the config:"]
        lines += [line for r in loose for line in
                  ([f"  {key}:  revision: {r['commit']}  # {r['repo']}" for key in r["pin_at"]]
                   or [f"  # {r['repo']} is at commit {r['commit']}; {UNPINNABLE}"])]
    return lines


def write_prefetch_record(records: list[dict], path: str | Path) -> None:
    """The machine-readable record of a prefetch (results/hub/prefetch.json), written atomically."""
    from finetox.tables import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                   "fetched": records}, indent=1))
