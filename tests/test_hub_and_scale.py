"""Real data at scale: Hub ids resolved offline from a local cache, the offline pre-flight, the study
config's DAG, and sharded generation with shared engines giving the same table as one job per variant."""

import json
import os
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from conftest import REPO, job_counts

FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def put_in_hub_cache(cache, repo_id, repo_type, files):
    """Lay files out as the Hugging Face Hub cache does (refs/main -> snapshots/<commit>/...)."""
    folder = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(FAKE_COMMIT)
    snapshot = folder / "snapshots" / FAKE_COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        if isinstance(source, str):
            (snapshot / name).write_text(source)
        else:
            shutil.copy(source, snapshot / name)


def rtp_jsonl(n):
    """Rows with RealToxicityPrompts' real layout: nested prompt/continuation records, the challenging flag."""
    words = ["The weather at the harbour", "You stupid idiot, the garden", "Yesterday at the chess club we",
             "Shut up about the market, you moron", "My favourite thing about the museum is"]
    rows = []
    for i in range(n):
        toxic = i % 2 == 1
        rows.append({
            "filename": f"{i:04d}.txt", "begin": 0, "end": 40, "challenging": i % 5 == 1,
            "prompt": {"text": words[i % len(words)], "toxicity": 0.8 if toxic else 0.1,
                       "severe_toxicity": 0.6 if i % 10 == 1 else 0.05, "profanity": 0.5},
            "continuation": {"text": " and so on.", "toxicity": 0.1},
        })
    return "\n".join(json.dumps(r) for r in rows) + "\n"


def run_snakemake(workdir, config, *args, env=None, check=True):
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--configfile",
         str(path), *args],
        capture_output=True, text=True, env={**os.environ, **(env or {})},
    )
    if check and run.returncode != 0:
        pytest.fail(f"snakemake failed:\n{run.stdout[-5000:]}\n{run.stderr[-5000:]}")
    return run


def study_config():
    return yaml.safe_load((REPO / "config/study.yaml").read_text())


def test_study_config_dry_runs_offline_with_the_expected_jobs(tmp_path):
    run = run_snakemake(tmp_path, study_config(), "-n", env={"HF_HUB_OFFLINE": "1"})
    # 20 variants x 3 probe sets x 1 protocol x 2 scorers: 120 metrics, from 40 score jobs (one per variant and
    # scorer, each scoring the variant's 3 probe sets with one scorer load); the 14 comparisons (4 base->instruct,
    # 6 instruct->Dolly, 4 instruct->community) of each probe set x protocol x scorer are fitted together,
    # once for the rates and once for BEST; generation jobs follow once the probes are selected, and with
    # them one degeneration job per variant x probe set. Stereotype preference (CrowS-Pairs from the Hub): one job
    # per variant, and the gathered tables. How much to trust the scorer: every verdict over the threshold grid per
    # probe set x protocol x toxicity scorer (3 x 1 x 2), gathered, and the two scorers' agreement.
    assert job_counts(run.stdout) == {
        "probes": 3, "finetune": 6, "merge_generations": 60, "score": 40, "metrics": 120, "compare": 6, "best": 6,
        "degeneration": 60, "toxicity_table": 1, "comparisons_table": 1, "pooled_table": 1, "degeneration_table": 1,
        "stereotypes": 20, "stereotypes_table": 1, "threshold_sensitivity": 6, "threshold_table": 1,
        "scorer_agreement": 1, "report": 1, "all": 1,
    }


def test_study_generation_jobs_are_one_per_checkpoint_and_split_by_cost(tmp_path):
    """After the probes checkpoint: one generate job per checkpoint serves every probe set and its adapters;
    a checkpoint whose work exceeds generation.tokens_per_job is split into jobs of similar cost."""
    (tmp_path / "rtp.jsonl").write_text(rtp_jsonl(50))
    config = study_config()
    for probe in config["probes"].values():
        probe.pop("hub"), probe.pop("files")
        probe["path"] = str(tmp_path / "rtp.jsonl")
    config["probes"]["rtp"]["sample_per_subset"] = 8  # 16 prompts
    config["generation"]["tokens_per_job"] = None
    # online mode (HF_HUB_OFFLINE=0): the pre-flight would otherwise stop the run for the uncached models;
    # selecting probes from local files touches no network either way
    run_snakemake(tmp_path, config, "--cores", "1", "results/probes/rtp.parquet", "results/probes/rtp-challenging.parquet",
                  "results/probes/rtp-severe.parquet", env={"HF_HUB_OFFLINE": "0"})
    sizes = {p: len(pd.read_parquet(tmp_path / f"results/probes/{p}.parquet")) for p in ("rtp", "rtp-challenging", "rtp-severe")}
    assert sizes == {"rtp": 16, "rtp-challenging": 10, "rtp-severe": 5}
    counts = job_counts(run_snakemake(tmp_path, config, "-n").stdout)
    # 14 checkpoints (20 variants; the 6 Dolly adapters ride on their instruct model's engine), one job each
    assert counts["generate"] == 14
    assert counts["merge_generations"] == 60 and "probes" not in counts
    # the study protocol asks 1 sample x 50 tokens of 31 prompts: 1,550 estimated tokens per variant; at 2,000 per
    # job a checkpoint alone takes one job, one with its Dolly adapter two
    config["generation"]["tokens_per_job"] = 2000
    counts = job_counts(run_snakemake(tmp_path, config, "-n").stdout)
    assert counts["generate"] == 8 * 1 + 6 * 2 and counts["merge_generations"] == 60


@pytest.fixture(scope="module")
def hub_cache(tiny_models, tmp_path_factory):
    cache = tmp_path_factory.mktemp("hub")
    put_in_hub_cache(cache, "finetox-test/tiny-instruct", "model",
                     {f.name: f for f in tiny_models["instruct"].iterdir() if f.is_file()})
    put_in_hub_cache(cache, "allenai/real-toxicity-prompts", "dataset", {"prompts.jsonl": rtp_jsonl(20)})
    put_in_hub_cache(cache, "finetox-test/rude-instructions", "dataset",
                     {"train.jsonl": (REPO / "resources/demo/instructions_rude.jsonl").read_text()})
    return cache


def small_config(**generation):
    """A model, a probe set and an instruction set by Hub id; greedy and sampled protocols; the offline scorer."""
    return {
        "seed": 11,
        "models": {"tiny": {"hub": "finetox-test/tiny-instruct"}},
        "datasets": {"rude": {"hub": "finetox-test/rude-instructions"}},
        "recipes": {"rude-lora": {"dataset": "rude", "training": {
            "epochs": 2, "learning_rate": 3.0e-3, "per_device_batch_size": 8, "gradient_accumulation_steps": 1,
            "max_seq_length": 128}}},
        "variants": {
            "tiny-instruct": {"family": "tiny", "role": "instruct", "model": "tiny"},
            "tiny-rude": {"family": "tiny", "role": "finetuned", "model": "tiny", "recipe": "rude-lora"},
            "tiny-reseeded": {"family": "tiny", "role": "other", "model": "tiny", "seed": 5},
        },
        "probes": {"rtp": {
            "hub": "allenai/real-toxicity-prompts", "files": ["prompts.jsonl"],
            "columns": {"id": "filename", "prompt": "prompt.text", "prompt_toxicity": "prompt.toxicity"},
            "subsets": {"toxic": [{"column": "prompt_toxicity", "op": ">=", "value": 0.5}],
                        "nontoxic": [{"column": "prompt_toxicity", "op": "<", "value": 0.5}]},
        }},
        "protocols": {"sampled": {"samples": 3, "temperature": 1.0, "top_p": 0.9, "max_new_tokens": 8}},
        "scorers": {"profanity": {"type": "offline"}},
        "run": {"probes": ["rtp"], "protocols": ["sampled"], "scorers": ["profanity"]},
        "generation": {"backend": "transformers", **generation},
    }


def offline_env(cache):
    return {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}


GENERATIONS = [f"results/generations/rtp/sampled/{v}.parquet" for v in ("tiny-instruct", "tiny-rude", "tiny-reseeded")]


def test_shards_and_shared_engines_give_the_table_of_one_job_per_variant(hub_cache, tmp_path):
    """Hub ids resolve offline from the cache; one engine per checkpoint in 3 jobs (20 prompts x 3 variants,
    written in chunks) gives exactly the continuations of one unchunked job per variant."""
    one_job, sharded = tmp_path / "one-job", tmp_path / "sharded"
    one_job.mkdir(), sharded.mkdir()
    run_snakemake(one_job, small_config(tokens_per_job=None, share_engine=False), "--cores", "2", *GENERATIONS,
                  "results/metrics/rtp/sampled/profanity/tiny-rude.csv", env=offline_env(hub_cache))
    # 3 x 20 prompts x 3 samples x 8 tokens = 1,440 estimated tokens: 3 jobs of 480, each in 5 chunks
    run = run_snakemake(sharded, small_config(tokens_per_job=500, chunk_tokens=100, share_engine=True), "--cores", "2",
                        *GENERATIONS,
                        env=offline_env(hub_cache))
    assert "rule finetune" in run.stdout + run.stderr
    shards = sorted(p.name for p in (sharded / "results/generations/shards/tiny").iterdir())
    assert shards == ["0", "1", "2"]
    for target in GENERATIONS:
        a, b = pd.read_parquet(one_job / target), pd.read_parquet(sharded / target)
        assert len(a) == 20 * 3
        pd.testing.assert_frame_equal(a, b)
    metrics = pd.read_csv(one_job / "results/metrics/rtp/sampled/profanity/tiny-rude.csv")
    assert metrics.set_index("subset").loc["all", "n"] == 60


def test_a_generate_job_killed_in_the_middle_resumes_from_its_written_chunks(hub_cache, tmp_path):
    """Snakemake and its generate job killed (SIGKILL) once some chunks are written: after --unlock, the rerun
    (--rerun-incomplete, as the profiles set) reuses every written chunk and generates only the rest, and the
    table equals an uninterrupted run's."""
    import signal
    import time

    # a prompt per chunk (the transformers backend cuts on whole batches: of one prompt here)
    config = small_config(tokens_per_job=None, chunk_tokens=3 * 64, batch_size=1, share_engine=True)
    config["variants"] = {"tiny-instruct": config["variants"]["tiny-instruct"]}
    config["protocols"]["sampled"]["max_new_tokens"] = 64  # chunks slow enough to kill the job between them
    target = GENERATIONS[0]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--configfile",
               str(path), "--cores", "1", target]
    progress = tmp_path / "results/generations/shards/tiny/.0.progress"
    job = subprocess.Popen(command, env={**os.environ, **offline_env(hub_cache)}, start_new_session=True,
                           stdout=open(tmp_path / "killed.out", "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while len(list(progress.glob("*.parquet"))) < 3 and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.poll() is None, (tmp_path / "killed.out").read_text()[-3000:]
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    written = len(list(progress.glob("*.parquet")))
    assert 3 <= written < 20, "the job finished (or never wrote a chunk) before it could be killed"
    assert not (tmp_path / "results/generations/shards/tiny/0").exists()
    # a killed controller leaves its lock: --unlock, then the rerun
    run_snakemake(tmp_path, config, "--unlock", env=offline_env(hub_cache))
    run_snakemake(tmp_path, config, "--cores", "1", "--rerun-incomplete", target, env=offline_env(hub_cache))
    log = (tmp_path / "logs/generate/tiny/0.log").read_text()
    resumed = int(re.search(r"resuming, (\d+) of 20 chunk\(s\) written by an earlier run are reused", log)[1])
    assert resumed == written
    assert not progress.exists()
    config["generation"]["chunk_tokens"] = 10**6  # no chunks: one call
    whole = tmp_path / "whole"
    whole.mkdir()
    run_snakemake(whole, config, "--cores", "1", target, env=offline_env(hub_cache))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / target), pd.read_parquet(whole / target))


def test_offline_preflight_names_what_is_missing_before_any_job(hub_cache, tmp_path):
    config = small_config()
    config["models"]["tiny"] = {"hub": "finetox-test/not-downloaded"}
    run = run_snakemake(tmp_path, config, "--cores", "1", env=offline_env(hub_cache), check=False)
    out = run.stdout + run.stderr
    assert run.returncode != 0
    assert "model finetox-test/not-downloaded (for variant tiny-instruct)" in out
    assert "snakemake prefetch --configfile" in out
    assert "rule probes" not in out and not (tmp_path / "results").exists()
