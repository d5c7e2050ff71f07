"""Config validation: the demo config loads, and every kind of mistake gets one clear error before any job runs."""

import subprocess
import sys

import pytest
import yaml

from finetox.config import ConfigError, load

from conftest import REPO, job_counts


REPAIRS = ("demo-rude-dpo", "demo-rude-safety-16", "demo-rude-safety-64", "demo-rude-distilled")


def test_demo_config_derives_the_study_comparisons(config):
    study = load(config)
    kinds = {c.name: c.kind for c in study.comparisons.values()}
    assert kinds == {
        "demo-base_vs_demo-instruct": "base_vs_instruct",
        "demo-instruct_vs_demo-instruct-clean": "instruct_vs_finetuned",
        "demo-instruct_vs_demo-instruct-rude": "instruct_vs_finetuned",
        **{f"demo-instruct_vs_{repair}": "instruct_vs_aligned" for repair in REPAIRS},
        **{f"demo-instruct-rude_vs_{repair}": "finetuned_vs_aligned" for repair in REPAIRS},
        "demo-instruct-rude_vs_demo-rude-guarded": "source_vs_guarded",
        "seed-control": "pair",
        "signal-control": "pair",
        "swapped-dpo": "pair",
    }
    assert study.variants["demo-instruct-rude"].recipe.datasets[0].path.endswith("instructions_rude.jsonl")
    # defaults from the schema are filled in
    assert study.threshold == 0.5
    assert study.recipes["clean-lora"].lora.target_modules[0] == "q_proj"


def test_community_variants_are_compared_with_their_family_instruct(config):
    config["variants"]["demo-community"] = {"family": "demo", "role": "community", "model": "demo-base"}
    config["comparisons"]["kinds"] = ["instruct_vs_community"]
    study = load(config)
    # (a guarded variant is compared with its source whatever `kinds` lists)
    assert {c.name for c in study.comparisons.values() if c.kind not in ("pair", "source_vs_guarded")} == {
        "demo-instruct_vs_demo-community"}


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c.update(variantz={}), ["variantz", "allowed keys", "variants"]),
        (lambda c: c["variants"]["demo-base"].update(role="teacher"), ["role", "teacher", "base", "instruct"]),
        (lambda c: c["variants"]["demo-base"].update(model="gpt-5"), ["variants['demo-base'].model", "gpt-5", "demo-instruct"]),
        (lambda c: c["recipes"]["rude-lora"].update(dataset="dolly"), ["recipes['rude-lora'].dataset", "dolly", "demo-clean"]),
        (lambda c: c["comparisons"]["pairs"][0].update(treatment="nobody"), ["seed-control", "nobody", "demo-base"]),
        (lambda c: c["run"].update(scorers=["perspective"]), ["run.scorers", "perspective", "profanity"]),
        (lambda c: c["variants"]["demo-instruct-rude"].update(recipe=None), ["needs a recipe", "rude-lora"]),
        (lambda c: c["protocols"]["demo"].update(top_p="high"), ["top_p", "high", "number"]),
        (lambda c: c["models"]["demo-base"].update(hub="x/y"), ["demo-base", "exactly one of 'path' or 'hub'"]),
        (lambda c: c["scorers"].update(bad={"type": "perspective-api"}), ["perspective-api", "detoxify", "offline"]),
        (lambda c: c["probes"]["demo"].update(subset={}), ["subset", "allowed keys", "subsets"]),
        (lambda c: c["protocols"]["demo"].update(temperature=0), ["greedy", "samples"]),
        (lambda c: c["comparisons"]["pairs"][0].update(treatment="demo-instruct"),
         ["comparisons.pairs['seed-control']", "both 'demo-instruct'", "two different variants"]),
        (lambda c: c["comparisons"].update(draws=100), ["comparisons.draws x comparisons.chains = 100 x 2", "400"]),
        (lambda c: c["probes"]["demo"].update(path="resources/demo/probes.jsnl"),
         ["probes['demo'].path", "'.jsnl'", ".jsonl"]),
        (lambda c: c["probes"]["demo"].update(path="resources/demo/missing.jsonl"),
         ["probes['demo'].path", "missing.jsonl", "does not exist"]),
        (lambda c: c["datasets"]["demo-rude"].update(path="rude.csv"), ["datasets['demo-rude'].path", "does not exist"]),
        (lambda c: c["scorers"].update(guard={"type": "guard", "model": "m", "unsafe_token": "unsafe"}),
         ["scorers['guard']: type guard needs 'model', 'unsafe_token' and 'safe_token'"]),
        (lambda c: c["scorers"].update(rm={"type": "reward-model"}), ["scorers['rm']: type reward-model needs 'model'"]),
        (lambda c: c["scorers"].update(hate={"type": "hf-classifier", "model": "m", "label": "hate", "safe_token": "no"}),
         ["scorers['hate'].safe_token: only a scorer of type guard takes it, this one is hf-classifier"]),
        (lambda c: c["scorers"]["profanity"].update(template="chat"),
         ["scorers['profanity'].template: only a scorer of type guard or reward-model takes it"]),
        (lambda c: c["scorers"].update(guard={"type": "guard", "model": "m", "unsafe_token": "", "safe_token": "safe"}),
         ["unsafe_token", "should be non-empty"]),
        (lambda c: (c["scorers"].update(rm={"type": "reward-model", "model": "m"}), c["run"]["scorers"].append("rm")),
         ["run.scorers: 'rm' is a reward model", "no rate of toxic or refused answers"]),
    ],
)
def test_bad_config_names_the_key_and_what_is_allowed(config, mutate, expected):
    mutate(config)
    with pytest.raises(ConfigError) as error:
        load(config)
    for fragment in expected:
        assert fragment in str(error.value)


def test_guard_and_reward_model_scorers_are_declared_with_what_they_measure(config):
    config["scorers"].update(
        guard={"type": "guard", "model": "meta-llama/Llama-Guard-3-8B", "unsafe_token": "unsafe", "safe_token": "safe",
               "answer_prefix": "\n\n", "max_length": 2048},
        rm={"type": "reward-model", "model": "OpenAssistant/reward-model-deberta-v3-large-v2", "template": "pair"})
    config["run"]["scorers"].append("guard")
    study = load(config)
    assert study.scorers["guard"].measures == "toxicity" and study.scorers["rm"].measures == "reward"
    assert study.run_scorers[-1] == "guard" and "rm" not in study.run_scorers
    assert study.scorers["guard"].options["answer_prefix"] == "\n\n"


def test_snakemake_refuses_a_bad_config_before_any_job(tmp_path, config):
    config["variants"]["demo-base"]["role"] = "teacher"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--configfile", str(bad), "-d", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True,
    )
    out = run.stdout + run.stderr
    assert run.returncode != 0
    assert "config['variants']['demo-base']['role']: 'teacher' is not one of" in out
    assert "Job stats" not in out


def test_a_configfile_replaces_the_demo_config_instead_of_merging(tmp_path, config):
    """--configfile must not inherit the demo's models and variants."""
    small = {
        "models": {"m": {"hub": "org/model"}},
        "variants": {"only-one": {"family": "f", "role": "base", "model": "m"}},
        "probes": {"demo": {**config["probes"]["demo"], "path": str(REPO / "resources/demo/probes.jsonl")}},
        "protocols": config["protocols"],
        # (the demo's lexicon and refusal scorers: its classifier is trained by a demo rule from resources/demo)
        "scorers": {name: config["scorers"][name] for name in ("profanity", "refusal")},
        "run": {**config["run"], "scorers": ["profanity", "refusal"]},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(small))
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--configfile", str(path), "-d", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "results/generations/demo/demo/only-one.parquet" in run.stdout
    # (two scorers, profanity and refusal; no capability key, so no capability jobs; no comparison, so no threshold
    # grid job, and one toxicity scorer: the agreement table is a row saying there is no pair)
    assert job_counts(run.stdout) == {
        "probes": 1, "generate": 1, "merge_generations": 1, "score": 2, "metrics": 2, "degeneration": 1,
        "toxicity_table": 1, "comparisons_table": 1, "pooled_table": 1, "degeneration_table": 1,
        "threshold_table": 1, "scorer_agreement": 1, "report": 1, "all": 1,
    }


def test_job_requests_merge_stage_and_model_settings_and_grow_with_attempts(config):
    config["resources"] = {"generate": {"gpu": 1, "mem_mb": 32000, "runtime": 120}}
    config["models"]["demo-instruct"]["resources"] = {"generate": {"gpu": 2, "mem_mb": 160000}}
    config["models"]["demo-instruct"]["tensor_parallel_size"] = 2
    study = load(config)
    assert study.resources("generate", "demo-base") == {"threads": 1, "mem_mb": 32000, "runtime": 120, "gpu": 1}
    assert study.resources("generate", "demo-instruct") == {"threads": 1, "mem_mb": 160000, "runtime": 120, "gpu": 2}
    assert study.resources("generate", "demo-instruct", attempt=2)["mem_mb"] == 320000
    assert study.resources("generate", "demo-instruct", attempt=2)["runtime"] == 240
    assert study.resources("metrics") == {"threads": 1, "mem_mb": 4000, "runtime": 60, "gpu": 0}
    assert study.models["demo-instruct"].tensor_parallel_size == 2


def test_a_key_repeated_in_a_config_file_is_refused_naming_the_line(tmp_path):
    """Snakemake's YAML reader keeps the second of two equal keys; finetox reads the files again and refuses."""
    text = (REPO / "config/config.yaml").read_text()
    text = text.replace("variants:\n", "variants:\n  demo-base: {family: demo, role: base, model: demo-instruct}\n", 1)
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    run = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(path)], cwd=REPO,
                         capture_output=True, text=True)
    assert run.returncode != 0
    assert "key 'demo-base' is given twice in one mapping" in run.stdout + run.stderr


def test_table_file_types_agree_with_the_readers():
    from finetox.config import TABLE_SUFFIXES
    from finetox.data import READERS

    assert sorted(TABLE_SUFFIXES) == sorted(READERS)


@pytest.mark.parametrize("subsets, message", [
    ({"toxic": [{"column": "toxicity", "op": ">=", "value": 0.5}]}, "subset filter names column 'toxicity'"),
    ({"a": [{"column": "prompt_toxicity", "op": ">=", "value": 0.2}],
      "b": [{"column": "prompt_toxicity", "op": ">=", "value": 0.5}]}, "subsets must be disjoint"),
])
def test_a_local_probe_set_is_checked_before_any_job(config, tmp_path, subsets, message):
    """The dry run reads a local probe file (as it does to list the generation jobs): its mistakes stop it."""
    config["probes"]["demo"]["subsets"] = subsets
    for table in [*config["probes"].values(), *config["datasets"].values(), config["stereotypes"]]:
        if "path" in table:  # (not the dataset the run produces)
            table["path"] = str(REPO / table["path"])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    run = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(path), "-d", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True)
    assert run.returncode != 0 and "Job stats" not in run.stdout
    assert "resources/demo/probes.jsonl" in run.stdout + run.stderr and message in run.stdout + run.stderr


def test_a_control_is_read_by_the_report_only_and_reruns_no_comparison(config):
    config["comparisons"]["pairs"][0].pop("control", None)
    before = load(config).comparisons_hash()
    config["comparisons"]["pairs"][0]["control"] = "more"
    study = load(config)
    assert study.comparisons_hash() == before and study.comparisons["seed-control"].control == "more"
    config["comparisons"]["pairs"][0]["control"] = "higher"
    with pytest.raises(ConfigError) as error:
        load(config)
    assert "higher" in str(error.value) and "no difference" in str(error.value)


def scored_elsewhere(tmp_path, tables: dict[str, tuple[str, str]], probes=("a", "b"), protocols=("p1", "p2")) -> dict:
    """A study of score tables alone: `tables` maps each variant to the probe set x protocol its table answers."""
    import pandas as pd

    prompts = tmp_path / "probes.jsonl"
    prompts.write_text('{"id": "q1", "text": "You idiot"}\n{"id": "q2", "text": "The weather"}\n')
    for name in tables:
        pd.DataFrame({"id": ["q1", "q2"], "continuation": ["x", "y"], "score": [0.9, 0.1]}).to_csv(
            tmp_path / f"{name}.csv", index=False)
    return {
        "models": {"unused": {"hub": "example/unused"}},
        "variants": {name: {"family": "f", "role": "other", "scores": {
            "path": str(tmp_path / f"{name}.csv"), "probe": probe, "protocol": protocol, "scorer": "theirs"}}
            for name, (probe, protocol) in tables.items()},
        "probes": {p: {"path": str(prompts), "columns": {"id": "id", "prompt": "text"}} for p in probes},
        "protocols": {q: {"samples": 1, "temperature": 1.0, "max_new_tokens": 8} for q in protocols},
        "scorers": {"theirs": {"type": "offline"}},
        "run": {"probes": list(probes), "protocols": list(protocols), "scorers": ["theirs"]},
    }


@pytest.mark.parametrize("protocols, refused", [
    (("p1",), "run.probes: no variant answers probe set 'b' under any protocol ['p1'] x scorer ['theirs']"),
    (("p1", "p2"), "run.protocols: no variant answers protocol 'p2' under any probe set ['a', 'b'] x scorer"),
])
def test_a_run_that_no_variant_answers_is_refused_naming_what_could(tmp_path, protocols, refused):
    """Every variant scored elsewhere, none on probe set b (or under protocol p2): the run would gather nothing
    there, and the report used to crash on it (`No objects to concatenate`)."""
    tables = {"x": ("a", "p1"), "y": ("b", "p1")} if len(protocols) == 2 else {"x": ("a", "p1")}
    with pytest.raises(ConfigError) as error:
        load(scored_elsewhere(tmp_path, tables, protocols=protocols))
    message = str(error.value)
    assert refused in message
    assert "x answers a/p1/theirs" in message and "a variant with a model" in message
    # one variant with a model answers every probe set x protocol x scorer
    config = scored_elsewhere(tmp_path, tables, protocols=protocols)
    config["variants"]["generated"] = {"family": "f", "role": "base", "model": "unused"}
    assert load(config).run_probes == ("a", "b")


def test_tables_on_two_probe_sets_under_two_protocols_leave_empty_cells_that_the_report_skips(tmp_path):
    """x answers a/p1 and y b/p2: a/p2 and b/p1 are answered by no variant, which is legitimate (each probe set
    and protocol is answered somewhere); the report's continuations skip those cells instead of crashing."""
    from finetox import stages
    from finetox.paths import Targets

    study = load(scored_elsewhere(tmp_path, {"x": ("a", "p1"), "y": ("b", "p2")}))
    targets = Targets(study)
    probe_tables = {p: str(tmp_path / f"{p}.parquet") for p in study.run_probes}
    for probe, path in probe_tables.items():
        stages.select_probes(study, probe, path)
    score_files, prompt_files = {}, {}
    for key, path in targets.score_tables().items():
        probe, protocol, scorer, variant = key
        score_files[key] = str(tmp_path / f"{variant}.parquet")
        prompt_files[key] = str(tmp_path / f"{variant}.prompts.parquet")
        stages.import_scores(study, variant, probe_tables[probe], score_files[key])
        stages.metrics(study, probe, protocol, scorer, score_files[key], str(tmp_path / f"{variant}.csv"),
                       prompt_files[key])
    assert sorted(score_files) == [("a", "p1", "theirs", "x"), ("b", "p2", "theirs", "y")]
    instances = stages.report_instances(study, probe_tables, score_files, prompt_files, 5, 1000)
    assert instances.everything[("a", "p2")] is None and instances.everything[("b", "p1")] is None
    assert set(instances.everything[("a", "p1")]["variant"]) == {"x"}
    assert set(instances.everything[("b", "p2")]["variant"]) == {"y"}


def test_the_schema_names_the_designs_roles_kinds_and_lever_blocks():
    """Roles, comparison kinds and lever blocks are declared once (finetox.design, finetox.levers): the schema that
    validates a config enumerates exactly those, so a new lever or kind the schema does not know fails here."""
    from finetox.design import FAMILY_KINDS, KINDS, ROLES
    from finetox.levers import LEVERS
    from finetox.schema import load_schema

    schema = load_schema()
    variant = schema["properties"]["variants"]["additionalProperties"]
    kinds = schema["properties"]["comparisons"]["properties"]["kinds"]
    assert variant["properties"]["role"]["enum"] == list(ROLES)
    assert kinds["items"]["enum"] == kinds["default"] == list(FAMILY_KINDS)
    for key, lever in LEVERS.items():
        assert key in variant["properties"] and {"required": [key]} in variant["oneOf"], key
        assert lever.ROLE in ROLES and lever.COMPARISON_KIND in KINDS
    assert list(KINDS)[-1] == "pair" and set(FAMILY_KINDS) < set(KINDS)
