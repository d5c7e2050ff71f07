"""The demo through profiles/slurm on a real one-node SLURM cluster: every job goes through sbatch, the rules the
config gives a GPU ask the gpu partition for one (scoring too, given a GPU in the config alone), the others the
cpu partition for none, and the results equal a local run's."""

import os
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml

import slurm_cluster
from conftest import REPO

# The stages the test's config gives a GPU: scoring among them, as a config for the rtp protocol would, to show
# that the config alone routes a stage to the GPU partition (profiles/slurm/partitions.yaml).
GPU_RULES = {"finetune", "generate", "score"}
CPU_RULES = {"demo_models", "probes", "metrics", "degeneration", "compare", "best", "threshold_sensitivity",
             "scorer_agreement", "report"}
# The profile as a cluster user runs it, with this test cluster's overrides: no conda here, no
# accounting database (so no account and squeue for status), and quick status polling.
TEST_OVERRIDES = ["--sdm", "env-modules", "--slurm-no-account", "--slurm-status-command", "squeue",
                  "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "2",
                  "--latency-wait", "5", "--retries", "0"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = slurm_cluster.why_not_possible()
    if reason:
        pytest.skip(reason)
    slurm_cluster.install()
    cluster = slurm_cluster.Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def small_demo(workdir):
    """The demo, smaller: the base, instruct and rude variants on the first 60 prompts, the profanity scorer;
    finetune, generate and score ask for a GPU."""
    shutil.copytree(REPO / "resources", workdir / "resources")
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["variants"] = {k: v for k, v in config["variants"].items()
                          if k in ("demo-base", "demo-instruct", "demo-instruct-rude")}
    config["recipes"] = {"rude-lora": config["recipes"]["rude-lora"]}
    config["datasets"] = {"demo-rude": config["datasets"]["demo-rude"]}
    config.pop("capability", None)  # (its held-out dataset is dropped above)
    config.pop("stereotypes", None)  # (a forward pass per variant like capability's: nothing new for a cluster)
    config["run"]["scorers"] = ["profanity"]  # (the refusal scorer adds nothing a cluster would run differently)
    config["comparisons"]["pairs"] = []
    config["probes"]["demo"]["limit"] = 60
    config["resources"] = {stage: {"gpu": 1, "threads": 2} for stage in GPU_RULES}
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def snakemake(workdir, *args, env=None):
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
         "--configfile", str(workdir / "config.yaml"), *args],
        capture_output=True, text=True, env={**os.environ, **(env or {})},
    )
    if run.returncode != 0:
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{run.stdout[-8000:]}\n{run.stderr[-8000:]}")
    return run


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    local, on_slurm = tmp_path_factory.mktemp("local"), tmp_path_factory.mktemp("on-slurm")
    small_demo(local), small_demo(on_slurm)
    snakemake(local, "--cores", "2")
    snakemake(on_slurm, "--profile", str(REPO / "profiles/slurm"), *TEST_OVERRIDES, env=cluster.env)
    return local, on_slurm, cluster.jobs()


def rule_of(job):
    match = re.search(r"rule_([a-z_]+?)(?:_wildcards|/|$)", job.get("Comment", "") + " " + job.get("StdOut", ""))
    return match.group(1) if match else None


def test_every_job_went_through_sbatch_and_finished(runs):
    _, _, jobs = runs
    rules = {rule_of(job) for job in jobs}
    assert rules == GPU_RULES | CPU_RULES, [(j.get("Comment"), j.get("StdOut")) for j in jobs]
    assert {job["JobState"] for job in jobs} == {"COMPLETED"}
    # one generate job per checkpoint (the base model; the instruct model serving itself and its rude adapter)
    # and one score job per variant
    assert sum(rule_of(j) == "generate" for j in jobs) == 2 and sum(rule_of(j) == "score" for j in jobs) == 3


def test_gpu_rules_asked_the_gpu_partition_for_a_gpu_and_cpu_rules_did_not(runs):
    _, _, jobs = runs
    for job in jobs:
        requested = " ".join(job.get(key, "") for key in ("TresPerNode", "TresPerJob", "ReqTRES", "Gres"))
        if rule_of(job) in GPU_RULES:
            assert job["Partition"] == "gpu" and "gpu" in requested, job
        else:
            assert job["Partition"] == "cpu" and "gpu" not in requested, job


def test_results_equal_a_local_run(runs):
    local, on_slurm, _ = runs
    pd.testing.assert_frame_equal(pd.read_csv(local / "results/tables/toxicity.csv"),
                                  pd.read_csv(on_slurm / "results/tables/toxicity.csv"))
    ours, theirs = (pd.read_csv(d / "results/tables/comparisons.csv") for d in (local, on_slurm))
    assert ours["verdict"].tolist() == theirs["verdict"].tolist()
    pd.testing.assert_frame_equal(ours, theirs, check_exact=False, rtol=1e-6)
    assert "more toxic" in set(ours[ours["comparison"] == "demo-instruct_vs_demo-instruct-rude"]["verdict"])
