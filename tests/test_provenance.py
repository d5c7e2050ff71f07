"""Prefetch fetches what loading reads and records the commits; every output carries, per stage, the package
versions and the resolved commits of what it loaded; the report shows them; unpinned repositories are named."""

import hashlib
import json
import sys
from types import SimpleNamespace

import pandas as pd
import pytest

from conftest import REPO
from finetox import hub
from test_hub_and_scale import FAKE_COMMIT, put_in_hub_cache, rtp_jsonl, small_config

# File lists of real Hub repositories (main branch, as of 2024-2025).
LLAMA31_8B_INSTRUCT = [  # safetensors, plus Meta's original checkpoint in original/
    ".gitattributes", "LICENSE", "README.md", "USE_POLICY.md", "config.json", "generation_config.json",
    "model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors", "model-00003-of-00004.safetensors",
    "model-00004-of-00004.safetensors", "model.safetensors.index.json", "original/consolidated.00.pth",
    "original/params.json", "original/tokenizer.model", "special_tokens_map.json", "tokenizer.json",
    "tokenizer_config.json",
]
ROBERTA_HATE = [  # facebook/roberta-hate-speech-dynabench-r4-target: PyTorch .bin only, BPE vocab and merges
    ".gitattributes", "README.md", "config.json", "merges.txt", "pytorch_model.bin", "special_tokens_map.json",
    "tokenizer_config.json", "vocab.json",
]
LLAMA2_7B = [  # meta-llama/Llama-2-7b-hf: the same weights as safetensors and as .bin, each with an index
    ".gitattributes", "LICENSE.txt", "README.md", "Responsible-Use-Guide.pdf", "USE_POLICY.md", "config.json",
    "generation_config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
    "model.safetensors.index.json", "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin",
    "pytorch_model.bin.index.json", "special_tokens_map.json", "tokenizer.json", "tokenizer.model",
    "tokenizer_config.json",
]
GEMMA_2B = [  # google/gemma-2b: a GGUF file beside the safetensors
    ".gitattributes", "README.md", "config.json", "gemma-2b.gguf", "generation_config.json",
    "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json",
    "special_tokens_map.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
]
MISTRAL_7B_INSTRUCT_V03 = [  # mistralai/Mistral-7B-Instruct-v0.3: Mistral's own consolidated.safetensors at the top
    ".gitattributes", "README.md", "config.json", "consolidated.safetensors", "generation_config.json",
    "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors",
    "model.safetensors.index.json", "params.json", "special_tokens_map.json", "tokenizer.json", "tokenizer.model",
    "tokenizer.model.v3", "tokenizer_config.json",
]
PHI3_MINI_4K_INSTRUCT = [  # remote code beside the weights
    ".gitattributes", "CODE_OF_CONDUCT.md", "LICENSE", "NOTICE.md", "README.md", "SECURITY.md", "added_tokens.json",
    "config.json", "configuration_phi3.py", "generation_config.json", "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors", "model.safetensors.index.json", "modeling_phi3.py", "sample_finetune.py",
    "special_tokens_map.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
]
BERT_BASE_UNCASED = [  # Detoxify reads only its config and tokenizer; every weight format is there
    ".gitattributes", "LICENSE", "README.md", "config.json",
    "coreml/fill-mask/float32_model.mlpackage/Data/com.apple.CoreML/model.mlmodel",
    "coreml/fill-mask/float32_model.mlpackage/Data/com.apple.CoreML/weights/weight.bin",
    "coreml/fill-mask/float32_model.mlpackage/Manifest.json", "flax_model.msgpack", "model.onnx",
    "model.safetensors", "pytorch_model.bin", "rust_model.ot", "tf_model.h5", "tokenizer.json",
    "tokenizer_config.json", "vocab.txt",
]
OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def test_safetensors_without_the_original_checkpoint():
    assert hub.loading_files(LLAMA31_8B_INSTRUCT) == [
        "config.json", "generation_config.json", "model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
        "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors", "model.safetensors.index.json",
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json",
    ]


def test_bin_weights_when_there_are_no_safetensors():
    assert hub.loading_files(ROBERTA_HATE) == [
        "config.json", "merges.txt", "pytorch_model.bin", "special_tokens_map.json", "tokenizer_config.json",
        "vocab.json",
    ]


def test_safetensors_only_where_both_formats_are_there():
    chosen = hub.loading_files(LLAMA2_7B)
    assert not [f for f in chosen if ".bin" in f]
    assert {"model-00001-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.model"} <= set(chosen)


def test_never_gguf_and_a_repository_without_loadable_weights_fails():
    assert hub.loading_files(GEMMA_2B) == [
        "config.json", "generation_config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json", "special_tokens_map.json", "tokenizer.json", "tokenizer.model",
        "tokenizer_config.json",
    ]
    with pytest.raises(ValueError, match="no \\*.safetensors nor \\*.bin weights"):
        hub.loading_files(["config.json", "model-Q4_K_M.gguf", "original/consolidated.00.pth"])


def test_every_file_of_the_format_that_vllm_asks_the_cache_for():
    """Offline, vLLM asks the cache for all "*.safetensors" (else "*.bin") outside original/, so a file the
    index does not name (Mistral's consolidated.safetensors, a fine-tune's training_args.bin) comes too."""
    assert "consolidated.safetensors" in hub.loading_files(MISTRAL_7B_INSTRUCT_V03)
    assert "training_args.bin" in hub.loading_files(ROBERTA_HATE + ["training_args.bin"])


def test_code_only_with_trust_remote_code():
    assert "modeling_phi3.py" not in hub.loading_files(PHI3_MINI_4K_INSTRUCT)
    assert {"modeling_phi3.py", "configuration_phi3.py"} <= set(hub.loading_files(PHI3_MINI_4K_INSTRUCT, True))


def test_config_and_tokenizer_only_for_detoxify():
    assert hub.loading_files(BERT_BASE_UNCASED, weights=False) == [
        "config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"]


@pytest.mark.parametrize("env", [{"TORCH_HOME": "/opt/torch-home"}, {"XDG_CACHE_HOME": "/scratch/cache"}, {}])
def test_torch_hub_dir_and_checkpoint_names_match_torch_and_detoxify(env, monkeypatch):
    """finetox keeps these without torch (for the login node's pre-flight): they must not drift."""
    import torch
    from detoxify.detoxify import MODEL_URLS

    for name in ("TORCH_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert str(hub.torch_hub_dir()) == torch.hub.get_dir()
    schema_types = ("original", "unbiased", "multilingual")
    assert hub.DETOXIFY_CHECKPOINT_URLS == {t: MODEL_URLS[t] for t in schema_types}
    assert hub.detoxify_checkpoint("original").name == MODEL_URLS["original"].rsplit("/", 1)[1]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty Hugging Face Hub cache, where huggingface_hub (and transformers through it) looks."""
    from huggingface_hub import constants

    folder = tmp_path / "hub"
    folder.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(folder))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return folder


def detoxify_config(scorer=None):
    config = small_config()
    config["scorers"] = {"detox": scorer or {"type": "detoxify"}}
    config["run"]["scorers"] = ["detox"]
    return config


def test_offline_preflight_checks_detoxify_without_torch_or_detoxify(cache, monkeypatch):
    """On a login node neither is installed: the pre-flight still names the missing checkpoint."""
    from finetox.config import load

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    monkeypatch.setitem(sys.modules, "detoxify", None)
    study = load(detoxify_config())
    checkpoint = hub.torch_hub_dir() / "checkpoints" / "toxic_original-c1212f89.ckpt"
    assert f"Detoxify checkpoint {checkpoint} (for scorer detox)" in hub.missing(study)
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"weights")
    assert not [line for line in hub.missing(study) if "Detoxify" in line]


def test_a_guard_scorer_is_prefetched_pinned_and_checked_offline_as_a_classifier_is(cache, tmp_path):
    from finetox.config import load

    config = detoxify_config({"type": "guard", "model": "meta-llama/Llama-Guard-3-8B", "unsafe_token": "unsafe",
                              "safe_token": "safe", "trust_remote_code": True})
    study = load(config)
    (item,) = [i for i in hub.needed(study) if i.needed_by == "scorer detox"]
    assert (item.repo_id, item.revision, item.trust_remote_code, item.weights, item.pin_at) == (
        "meta-llama/Llama-Guard-3-8B", None, True, True, ("scorers.detox",))
    assert "model meta-llama/Llama-Guard-3-8B (for scorer detox): set `revision:` in scorers.detox" in hub.unpinned(study)
    assert "model meta-llama/Llama-Guard-3-8B (for scorer detox)" in hub.missing(study)
    config["scorers"]["detox"]["model"] = str(tmp_path)  # a local checkpoint: nothing to fetch
    assert not [i for i in hub.needed(load(config)) if i.needed_by == "scorer detox"]


def test_preflight_warns_about_unpinned_repositories(cache, capsys, monkeypatch):
    from finetox.config import load

    config = detoxify_config()
    config["models"]["tiny"]["revision"] = FAKE_COMMIT  # pinned: not named
    config["datasets"]["rude"]["revision"] = "main"  # a branch moves: named
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    hub.preflight(load(config), ["config.yaml"])
    warning = capsys.readouterr().err
    assert "not pinned to a commit" in warning and "finetox-test/tiny-instruct" not in warning
    assert "dataset finetox-test/rude-instructions@main (for recipe rude-lora): set `revision:` in datasets.rude" in warning
    assert "dataset allenai/real-toxicity-prompts (for probe set rtp): set `revision:` in probes.rtp" in warning
    assert "model bert-base-uncased (for scorer detox): Detoxify loads it by name" in warning


class FakeHub:
    """The Hub's API and snapshot_download for three repositories, laying files out as the real cache does
    (snapshots, refs, and the tree listing that makes huggingface_hub check a snapshot's completeness)."""

    repos = {
        ("finetox-test/tiny-instruct", "model"): LLAMA2_7B + ["gemma.gguf", "original/consolidated.00.pth"],
        ("allenai/real-toxicity-prompts", "dataset"): ["README.md", "prompts.jsonl"],
        ("finetox-test/rude-instructions", "dataset"): ["train.jsonl", "test.jsonl"],
        ("bert-base-uncased", "model"): BERT_BASE_UNCASED,
    }

    def __init__(self, cache):
        self.cache = cache
        self.asked = []

    def repo_info(self, repo_id, repo_type=None, revision=None):
        return SimpleNamespace(sha=revision if hub.is_commit(revision) else FAKE_COMMIT)

    def list_repo_files(self, repo_id, repo_type=None, revision=None):
        assert revision == FAKE_COMMIT or revision == OTHER_COMMIT  # listed at the resolved commit
        return self.repos[(repo_id, repo_type)]

    def snapshot_download(self, repo_id, repo_type=None, revision=None, allow_patterns=None, local_files_only=False):
        from huggingface_hub.utils import filter_repo_objects

        self.asked.append((repo_id, revision, sorted(allow_patterns)))
        commit = revision if hub.is_commit(revision) else FAKE_COMMIT
        files = list(filter_repo_objects(self.repos[(repo_id, repo_type)], allow_patterns=allow_patterns))
        folder = self.cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
        tree = {"format_version": 1, "files": {f: {"size": 1, "blob_id": "0"} for f in self.repos[(repo_id, repo_type)]}}
        (folder / "trees").mkdir(parents=True, exist_ok=True)
        (folder / "trees" / f"{commit}.json").write_text(json.dumps(tree))
        if not hub.is_commit(revision):
            (folder / "refs").mkdir(exist_ok=True)
            (folder / "refs" / (revision or "main")).write_text(commit)
        snapshot = folder / "snapshots" / commit
        snapshot.mkdir(parents=True, exist_ok=True)
        for name in files:
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            (snapshot / name).write_text("x")
        return str(snapshot)


def test_prefetch_fetches_what_loading_reads_and_records_the_commits(cache, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    from finetox.config import load

    fake, real_snapshot_download = FakeHub(cache), huggingface_hub.snapshot_download
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: fake)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    served = tmp_path / "toxic_original-c1212f89.ckpt"
    served.write_bytes(b"detoxify weights")
    monkeypatch.setitem(hub.DETOXIFY_CHECKPOINT_URLS, "original", served.as_uri())
    config = detoxify_config()
    config["datasets"]["rude"].update(files=["train.jsonl"], revision=OTHER_COMMIT)  # pinned: fetched by commit
    study = load(config)

    records = hub.prefetch(study)
    by_repo = {r.get("repo", r["type"]): r for r in records}
    model = by_repo["finetox-test/tiny-instruct"]
    assert model["commit"] == FAKE_COMMIT and model["revision"] is None and model["pin_at"] == ["models.tiny"]
    assert model["files"] == hub.loading_files(LLAMA2_7B)  # no .bin twins, no GGUF, no original/
    assert by_repo["bert-base-uncased"]["files"] == ["config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"]
    assert by_repo["finetox-test/rude-instructions"]["commit"] == OTHER_COMMIT
    assert by_repo["finetox-test/rude-instructions"]["files"] == ["train.jsonl"]
    assert ("finetox-test/rude-instructions", OTHER_COMMIT, ["train.jsonl"]) in fake.asked
    checkpoint = by_repo[hub.DETOXIFY_CHECKPOINT]
    assert checkpoint["sha256"] == hashlib.sha256(b"detoxify weights").hexdigest()
    assert hub.detoxify_checkpoint("original").read_bytes() == b"detoxify weights"

    log = hub.prefetch_log(records)
    assert f"model finetox-test/tiny-instruct@main -> commit {FAKE_COMMIT}, 9 files (for variant tiny-instruct)" in log
    assert f"  models.tiny:  revision: {FAKE_COMMIT}  # finetox-test/tiny-instruct" in log
    assert f"  probes.rtp:  revision: {FAKE_COMMIT}  # allenai/real-toxicity-prompts" in log
    assert not [line for line in log if "datasets.rude" in line]  # already pinned
    record = tmp_path / "results/hub/prefetch.json"
    hub.write_prefetch_record(records, record)
    assert json.loads(record.read_text())["fetched"] == records

    # Offline, the pre-flight finds everything in the cache, although its file lists (trees/) name more
    # files than were fetched (which a check of the whole snapshot would call incomplete).
    monkeypatch.setattr(huggingface_hub, "snapshot_download", real_snapshot_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.missing(study) == []
    hub.preflight(study, ["config.yaml"])
    # vLLM's own offline request for the weights (weight_utils.download_weights_from_hf) finds them complete
    real_snapshot_download("finetox-test/tiny-instruct", allow_patterns="*.safetensors",
                           ignore_patterns=["original/**/*"], local_files_only=True)
    (cache / "models--finetox-test--tiny-instruct" / "snapshots" / FAKE_COMMIT / "tokenizer.json").unlink()
    assert hub.missing(study) == ["model finetox-test/tiny-instruct (for variant tiny-instruct)"]


def test_resolved_commits_from_the_cache(cache, tmp_path):
    put_in_hub_cache(cache, "org/model", "model", {"config.json": "{}"})
    assert hub.resolved_commit("org/model") == FAKE_COMMIT
    assert hub.resolved_commit("org/model", revision=FAKE_COMMIT) == FAKE_COMMIT
    assert hub.resolved_commit("org/model", revision=OTHER_COMMIT) is None  # not in the cache
    assert hub.resolved_commit("org/model", "dataset") is None
    assert hub.hub_record("org/model", "model", None) == {"hub": "org/model", "type": "model", "revision": None,
                                                          "commit": FAKE_COMMIT}
    assert hub.path_record(tmp_path) == {"path": str(tmp_path.resolve())}


def test_scorer_records_name_checkpoints_and_commits(cache, tmp_path):
    from finetox.config import ScorerSpec

    put_in_hub_cache(cache, "bert-base-uncased", "model", {"config.json": "{}"})
    put_in_hub_cache(cache, "facebook/roberta-hate-speech-dynabench-r4-target", "model", {"config.json": "{}"})
    checkpoint = hub.detoxify_checkpoint("original")
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    assert hub.scorer_records(ScorerSpec("d", "detoxify", {"model_type": "original"})) == {
        "checkpoint": {"path": str(checkpoint.resolve()), "sha256": digest},
        "config": {"hub": "bert-base-uncased", "type": "model", "revision": None, "commit": FAKE_COMMIT},
    }
    own = ScorerSpec("d", "detoxify", {"model_type": "original", "checkpoint": str(checkpoint), "config_dir": str(tmp_path)})
    assert hub.scorer_records(own)["config"] == {"path": str(tmp_path.resolve())}
    classifier = ScorerSpec("r", "hf-classifier", {"model": "facebook/roberta-hate-speech-dynabench-r4-target"})
    assert hub.scorer_records(classifier)["model"]["commit"] == FAKE_COMMIT
    for kind in ("guard", "reward-model"):  # loaded as a classifier is: a Hub id and its commit, or a local path
        assert hub.scorer_records(ScorerSpec("g", kind, {"model": "facebook/roberta-hate-speech-dynabench-r4-target",
                                                         "revision": FAKE_COMMIT}))["model"] == {
            "hub": "facebook/roberta-hate-speech-dynabench-r4-target", "type": "model", "revision": FAKE_COMMIT,
            "commit": FAKE_COMMIT}
        assert hub.scorer_records(ScorerSpec("g", kind, {"model": str(tmp_path)}))["model"] == {"path": str(tmp_path.resolve())}
    assert hub.scorer_records(ScorerSpec("p", "offline", {})) == {}


def generations_of(probes: pd.DataFrame, variant: str) -> pd.DataFrame:
    """A generations table for the probes (what the generate stage writes), with fixed continuations."""
    return probes.assign(variant=variant, sample=0, model_input=probes["prompt"], continuation=" you idiot",
                         prompt_tokens=5, continuation_tokens=2, finish_reason="length", protocol="sampled",
                         prompt_format="raw", samples=1, temperature=1.0, top_p=0.9, max_new_tokens=8, seed=1,
                         backend="transformers")


def test_outputs_carry_every_upstream_stage_and_the_report_shows_them(cache, tiny_models, tmp_path, monkeypatch):
    """Probes from a Hub dataset, an adapter trained on a Hub model and dataset, generations in two shards,
    scores, and the report: each output's metadata has the records of the stages it depends on."""
    from finetox import stages, tables
    from finetox.config import load
    from finetox.paths import Targets

    put_in_hub_cache(cache, "finetox-test/tiny-instruct", "model",
                     {f.name: f for f in tiny_models["instruct"].iterdir() if f.is_file()})
    put_in_hub_cache(cache, "allenai/real-toxicity-prompts", "dataset", {"prompts.jsonl": rtp_jsonl(6)})
    put_in_hub_cache(cache, "finetox-test/rude-instructions", "dataset",
                     {"train.jsonl": (REPO / "resources/demo/instructions_rude.jsonl").read_text()})
    config = small_config()
    config["recipes"]["rude-lora"].update(max_examples=16)
    config["recipes"]["rude-lora"]["training"].update(epochs=1, max_seq_length=64)
    config["protocols"]["sampled"]["samples"] = 1
    study = load(config)
    monkeypatch.chdir(tmp_path)
    stages.select_probes(study, "rtp", "probes.parquet")
    stages.finetune(study, "tiny-rude", "adapter", "loss.csv")
    probes = tables.read_parquet("probes.parquet", "probes")
    for shard, rows in enumerate((probes.iloc[:3], probes.iloc[3:])):
        # what generate records once its engine is loaded (see stages._generation_stages)
        tables.write_parquet(generations_of(rows, "tiny-rude"), Targets.shard_part(f"shard{shard}", "rtp", "sampled",
                                                                                   "tiny-rude"), "generations",
                             stages._provenance(study, stages._generation_stages("probes.parquet", "adapter",
                                                                                 study.variants["tiny-rude"].model),
                                                variant="tiny-rude", shard=shard))
    stages.merge_generations(study, "rtp", "sampled", "tiny-rude", ["shard0", "shard1"], "generations.parquet")
    stages.score(study, "profanity", ["generations.parquet"], ["scores.parquet"])

    recorded = tables.provenance_of("scores.parquet")
    assert recorded["variant"] == "tiny-rude"
    carried = recorded["stages"]
    assert list(carried) == ["probes", "finetune", "generate", "score"]
    assert carried["probes"]["dataset"] == {"hub": "allenai/real-toxicity-prompts", "type": "dataset",
                                            "revision": None, "commit": FAKE_COMMIT}
    assert carried["finetune"]["model"] == carried["generate"]["model"] == {
        "hub": "finetox-test/tiny-instruct", "type": "model", "revision": None, "commit": FAKE_COMMIT}
    assert carried["finetune"]["dataset"]["hub"] == "finetox-test/rude-instructions"
    assert carried["score"]["scorer"] == "profanity"
    versions = tables.package_versions()
    assert all(record["versions"] == versions for record in carried.values())

    stages.metrics(study, "rtp", "sampled", "profanity", "scores.parquet", "toxicity.csv", "prompts.parquet")
    assert list(tables.provenance_of("prompts.parquet")["stages"]) == ["probes", "finetune", "generate", "score"]
    tables.write_csv(pd.DataFrame(columns=list(tables.SCHEMAS["comparisons"])), "comparisons.csv", "comparisons")
    tables.write_csv(pd.DataFrame(columns=list(tables.SCHEMAS["pooled"])), "pooled.csv", "pooled")
    stages.degeneration(study, "rtp", "sampled", "generations.parquet", "degeneration.csv")
    run = ("rtp", "sampled", "profanity", "tiny-rude")
    stages.report(study, "toxicity.csv", "comparisons.csv", "pooled.csv", "degeneration.csv", ["loss.csv"],
                  {"rtp": "probes.parquet"}, {}, {run: "scores.parquet"}, {run: "prompts.parquet"}, ["adapter"],
                  "report.html")
    html = (tmp_path / "report.html").read_text()
    assert "Package versions per stage" in html and "What each stage loaded" in html
    for stage in ("probes", "finetune", "generate", "score", "report"):
        assert f"<td>{stage}</td>" in html
    assert "<td>model finetox-test/tiny-instruct</td>" in html and f"<td>{FAKE_COMMIT}</td>" in html
    assert "<td>main (not pinned)</td>" in html and "master seed 11" in html


def test_a_score_job_loads_its_scorer_once_for_all_its_tables(tmp_path, monkeypatch):
    """One score job serves a variant's tables of every probe set x protocol: the scorer is built once, and each
    table's scores and provenance are those of scoring it alone."""
    from finetox import scoring, stages, tables
    from finetox.config import load

    study = load(small_config())
    monkeypatch.chdir(tmp_path)
    sources = []
    for protocol, texts in (("sampled", [" you idiot", " have a nice day"]), ("greedy", [" damn it", " thanks"])):
        probes = pd.DataFrame({"prompt_id": ["a", "b"], "prompt": ["One", "Two"], "subset": ["toxic", "nontoxic"]})
        table = generations_of(probes, "tiny").assign(continuation=texts, protocol=protocol)
        tables.write_parquet(table, f"{protocol}.parquet", "generations", {"variant": "tiny"})
        sources.append(f"{protocol}.parquet")
    builds = []
    monkeypatch.setattr(scoring, "build_scorer", lambda *a, build=scoring.build_scorer: builds.append(a) or build(*a))
    stages.score(study, "profanity", sources, ["together_sampled.parquet", "together_greedy.parquet"])
    assert len(builds) == 1
    for source in sources:
        stages.score(study, "profanity", [source], [f"alone_{source}"])
        together, alone = (tables.read_parquet(f"{how}_{source}", "scores") for how in ("together", "alone"))
        pd.testing.assert_frame_equal(together, alone)
        assert tables.provenance_of(f"together_{source}")["generations"] == source
    assert tables.read_parquet("together_sampled.parquet", "scores")["score"].iloc[0] > 0.5


def test_shards_that_ran_differently_keep_each_record():
    from finetox.report import provenance_tables
    from finetox.stages import _shards_stages

    probes = {"versions": {"pandas": "2"}}
    old, new = ({"versions": {"vllm": v}, "model": {"path": "/m"}} for v in ("0.31", "0.32"))
    merged = _shards_stages([{"probes": probes, "generate": old}, {"probes": probes, "generate": new}])
    assert merged == {"probes": probes, "generate": {"shards": [old, new]}}
    frames = provenance_tables([("v", merged), ("w", {"probes": probes, "generate": new})], {"v", "w"})
    versions = frames["Package versions per stage"]
    assert versions[["stage", "vllm", "for"]].values.tolist() == [
        ["probes", "–", "all variants"], ["generate", "0.31", "v"], ["generate", "0.32", "all variants"]]
    assert frames["What each stage loaded"][["stage", "source", "revision"]].values.tolist() == [
        ["generate", "/m", "local"]]


def test_the_fit_versions_come_from_the_posterior():
    import arviz as az

    from finetox.report import fit_versions

    idata = az.from_dict(posterior={"cell": [[0.1, 0.2]]})
    idata.posterior.attrs.update({  # what bambi's fit writes (to_netcdf keeps it)
        "arviz_version": "0.23.4", "inference_library": "pymc", "inference_library_version": "5.28.5",
        "modeling_interface": "bambi", "modeling_interface_version": "0.17.2", "created_at": "2026"})
    assert fit_versions(idata) == {"arviz": "0.23.4", "pymc": "5.28.5", "bambi": "0.17.2"}
    assert fit_versions(az.InferenceData()) == {}
