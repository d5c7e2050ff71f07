"""Safety recipes in the config and the DAG: sft mixes, dpo, sequential recipes (merge), aligned comparisons."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from conftest import REPO, job_counts
from finetox.config import ConfigError, DatasetPart, TableSource, load
from finetox.data import DataError
from finetox.mixes import load_instruction_mix


def test_the_demo_offers_repairs_of_the_rude_fine_tune_and_compares_them(config):
    study = load(config)
    repairs = {"demo-rude-dpo", "demo-rude-safety-16", "demo-rude-safety-64", "demo-rude-distilled"}
    assert {v.name for v in study.variants.values() if v.role == "aligned"} == repairs
    kinds = {(c.kind, c.baseline, c.treatment) for c in study.comparisons.values()}
    for repair in repairs:
        assert ("instruct_vs_aligned", "demo-instruct", repair) in kinds
        assert ("finetuned_vs_aligned", "demo-instruct-rude", repair) in kinds
    assert ("pair", "demo-instruct-rude", "demo-rude-dpo-swapped") in kinds
    dpo = study.recipes["polite-dpo"]
    assert dpo.method == "dpo" and dpo.dpo.beta == 0.1 and not dpo.dpo.swap_labels
    assert study.recipes["swapped-dpo"].dpo.swap_labels
    assert [(p.dataset.name, p.examples) for p in study.recipes["safety-sft-64"].parts] == [("demo-clean", 64)]


def test_a_sequential_variant_trains_on_and_is_served_from_the_merged_checkpoint(config):
    study = load(config)
    checkpoint = study.checkpoint("demo-rude-dpo")
    assert checkpoint.path == "results/merged/demo-instruct-rude" and checkpoint.hub is None
    # its root model (resources, Hub files) is the rude fine-tune's
    assert study.variants["demo-rude-dpo"].model == study.variants["demo-instruct-rude"].model
    assert study.checkpoint("demo-instruct-rude") == study.models["demo-instruct"]
    # a change to the rude fine-tune's recipe retrains (and regenerates) the repair too
    before = (study.training_hash("demo-rude-dpo"), study.generation_hash("demo-rude-dpo", "demo"))
    config["recipes"]["rude-lora"]["training"] = {**config["recipes"]["rude-lora"]["training"], "epochs": 3}
    after = load(config)
    assert after.training_hash("demo-rude-dpo") != before[0]
    assert after.generation_hash("demo-rude-dpo", "demo") != before[1]


def test_recipes_of_one_dataset_keep_their_rerun_hashes():
    """Adding methods and mixes must not retrain anyone's existing fine-tunes: the digests before the change."""
    study = load(yaml.safe_load((REPO / "config" / "config.yaml").read_text()))
    assert study.training_hash("demo-instruct-rude") == "be7169e8bb2dfc42"
    assert study.training_hash("demo-instruct-clean") == "f39fefb9ec04187c"
    assert study.generation_hash("demo-instruct-rude", "demo") == "d3e91d346ebad4c6"
    assert study.generation_hash("demo-instruct", "demo") == "d1963c37d9f8c1d4"


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["variants"]["demo-rude-dpo"].update({"from": "nobody"}), "unknown variant 'nobody'"),
    (lambda c: c["variants"]["demo-rude-dpo"].update({"from": "demo-instruct"}), "has no recipe, so no adapter"),
    (lambda c: c["variants"]["demo-instruct-rude"].update({"family": "other"}), "is in family 'other'"),
    (lambda c: (c["variants"]["demo-instruct-rude"].pop("model"),
                c["variants"]["demo-instruct-rude"].update({"from": "demo-rude-dpo"})), "is a cycle"),
    (lambda c: c["variants"]["demo-rude-dpo"].update({"model": "demo-instruct"}), "give exactly one of"),
    (lambda c: c["variants"]["demo-rude-dpo"].pop("recipe"), "role 'aligned' needs a recipe"),
    (lambda c: c["recipes"]["polite-dpo"].update({"dataset": "demo-clean"}), "method dpo needs preference pairs"),
    (lambda c: c["recipes"]["polite-dpo"].update({"dataset": None, "mix": [{"dataset": "demo-preferences"}]}),
     "give exactly one of"),
    (lambda c: (c["recipes"]["polite-dpo"].pop("dataset"), c["recipes"]["polite-dpo"].update(
        {"mix": [{"dataset": "demo-preferences"}]})), "method dpo trains on one preference dataset"),
    (lambda c: c["recipes"]["rude-lora"].update({"dpo": {"beta": 0.2}}), "DPO settings need method: dpo"),
    (lambda c: c["recipes"]["safety-sft-16"].update({"max_examples": 3}), "give each dataset's `examples` instead"),
    (lambda c: c["recipes"]["safety-sft-16"].update({"dataset": "demo-clean"}), "give exactly one of"),
    (lambda c: c["recipes"]["safety-sft-16"]["mix"].append({"dataset": "nothing"}), "mix[1].dataset: unknown dataset"),
    (lambda c: c["scorers"].update({"toxic": {"type": "offline", "measures": "refusal"}}), "only a scorer of type hf-classifier"),
    (lambda c: c["scorers"].update({"toxic": {"type": "offline", "match": "prefix"}}), "only a scorer of type refusal"),
])
def test_bad_recipes_and_starts_are_refused_naming_the_key(config, edit, message):
    edit(config)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load(config)


def test_an_sft_mix_takes_a_seeded_nested_sample_of_each_dataset_and_counts_it(tmp_path):
    def dataset(name, n):
        path = tmp_path / f"{name}.jsonl"
        pd.DataFrame({"instruction": [f"{name} {i}" for i in range(n)], "response": [f"r{i}" for i in range(n)]}
                     ).to_json(path, orient="records", lines=True)
        return TableSource(name, str(path), None, (), None, {}, None)

    general, safety = dataset("general", 30), dataset("safety", 40)
    small, counts_small = load_instruction_mix([DatasetPart(general, None), DatasetPart(safety, 5)], seed=3)
    large, counts_large = load_instruction_mix([DatasetPart(general, None), DatasetPart(safety, 20)], seed=3)
    assert counts_small == {"general": 30, "safety": 5} and counts_large == {"general": 30, "safety": 20}
    assert len(small) == 35 and list(small["instruction"][:30]) == [f"general {i}" for i in range(30)]
    # the smaller dose is part of the larger one, so a dose-response compares like with like
    assert set(small["instruction"][30:]) < set(large["instruction"][30:])
    again, _ = load_instruction_mix([DatasetPart(general, None), DatasetPart(safety, 5)], seed=3)
    pd.testing.assert_frame_equal(small, again)
    zero, counts_zero = load_instruction_mix([DatasetPart(general, None), DatasetPart(safety, 0)], seed=3)
    assert counts_zero == {"general": 30, "safety": 0} and len(zero) == 30
    with pytest.raises(DataError, match="nothing to train on"):
        load_instruction_mix([DatasetPart(safety, 0)], seed=3)


def test_sft_on_a_preference_dataset_trains_on_its_chosen_responses():
    source = TableSource("prefs", str(REPO / "resources/demo/preferences.jsonl"), None, (), None, {}, None, "preferences")
    examples, counts = load_instruction_mix([DatasetPart(source, 10)], seed=1)
    assert counts == {"prefs": 10} and list(examples.columns) == ["instruction", "context", "response"]
    pairs = pd.read_json(source.path, lines=True)
    chosen = set(zip(pairs["instruction"], pairs["chosen"]))
    assert all((row.instruction, row.response) in chosen for row in examples.itertuples())
    assert not set(examples["response"]) & set(pairs["rejected"])


def test_the_dry_run_merges_the_rude_fine_tune_once_and_trains_the_repair_on_it(tmp_path):
    shutil.copytree(REPO / "config", tmp_path / "config")
    shutil.copytree(REPO / "resources", tmp_path / "resources")
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "-n",
                          "results/finetune/demo-rude-dpo/adapter"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    counts = job_counts(run.stdout)
    assert counts["merge"] == 1 and counts["finetune"] == 2  # the rude fine-tune, then the repair on its merge
    assert "results/merged/demo-instruct-rude" in run.stdout


def test_a_chat_protocol_may_put_a_system_turn_before_each_prompt(config):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from finetox.prompts import probe_text

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")))
    tokenizer.chat_template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    assert probe_text("Hi", "chat", tokenizer, "Be safe.") == "<system>Be safe.<user>Hi<assistant>"
    assert probe_text("Hi", "chat", tokenizer) == "<user>Hi<assistant>"
    assert probe_text("Hi", "raw", tokenizer, "Be safe.") == "Hi"
    config["protocols"]["demo"]["system_prompt"] = "Be safe."
    with pytest.raises(ConfigError, match=r"protocols\['demo'\].system_prompt: a system turn needs prompt_format: chat"):
        load(config)
    config["protocols"]["demo"]["prompt_format"] = "chat"
    study = load(config)
    assert study.protocols["demo"].system_prompt == "Be safe."
    before = load(yaml.safe_load((REPO / "config" / "config.yaml").read_text()))
    assert study.generation_hash("demo-instruct", "demo") != before.generation_hash("demo-instruct", "demo")


def test_the_study_with_its_repairs_dry_runs_offline_in_seconds(tmp_path):
    """config/repairs.yaml added to config/study.yaml: every family's Dolly fine-tune is merged once and repaired
    by DPO (and, for four families, safety SFT at two doses), all planned before any job and without a network."""
    import os
    import time

    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "-n",
                          "--configfile", str(REPO / "config/study.yaml"), str(REPO / "config/repairs.yaml")],
                         capture_output=True, text=True, env={**env, "HF_HUB_CACHE": str(tmp_path / "hub")})
    assert run.returncode == 0, run.stderr[-3000:]
    assert time.monotonic() - started < 60
    counts = job_counts(run.stdout)
    assert counts["merge"] == 6 and counts["finetune"] == 6 + 14 and counts["probes"] == 3
    assert counts["capability"] == 34  # every generated variant, on held-out Alpaca answers
    from snakemake.utils import update_config  # how Snakemake merges several --configfile files

    merged = yaml.safe_load((REPO / "config/study.yaml").read_text())
    update_config(merged, yaml.safe_load((REPO / "config/repairs.yaml").read_text()))
    study = load(merged)
    repairs = [c for c in study.comparisons.values() if c.kind == "finetuned_vs_aligned"]
    assert len(repairs) == 14 and all(study.variants[c.baseline].recipe.name.startswith("dolly") for c in repairs)
    assert study.scorers["refusal"].measures == "refusal" and study.run_scorers[-1] == "refusal"


def test_the_guards_overlay_plans_guarded_variants_of_the_study_offline(tmp_path):
    """config/guards.yaml after config/study.yaml: three guarded Dolly fine-tunes (Llama Guard 3, ShieldGemma, a
    reward model), each one select job and compared with its source, planned offline; the selectors are
    prefetched but score nothing else."""
    import os

    from finetox.hub import needed

    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "-n",
                          "--configfile", str(REPO / "config/study.yaml"), str(REPO / "config/guards.yaml")],
                         capture_output=True, text=True, env={**env, "HF_HUB_CACHE": str(tmp_path / "hub")})
    assert run.returncode == 0, run.stderr[-3000:]
    counts = job_counts(run.stdout)
    # 23 variants x 2 scorers; one select job per guarded variant, its candidates merged per probe set (3)
    assert counts["score"] == 23 * 2 and counts["finetune"] == 6 and counts["select_guarded"] == 3
    assert counts["merge_candidates"] == 3 * 3 and counts["merge_generations"] == 20 * 3
    from snakemake.utils import update_config

    merged = yaml.safe_load((REPO / "config/study.yaml").read_text())
    update_config(merged, yaml.safe_load((REPO / "config/guards.yaml").read_text()))
    study = load(merged)
    guarded = {c.treatment: c.baseline for c in study.comparisons.values() if c.kind == "source_vs_guarded"}
    assert guarded == {"llama31-8b-instruct-dolly-guarded": "llama31-8b-instruct-dolly",
                       "gemma2-2b-it-dolly-shieldgemma": "gemma2-2b-it-dolly",
                       "llama2-7b-chat-dolly-reranked": "llama2-7b-chat-dolly"}
    fetched = {item.repo_id for item in needed(study)}
    assert {"meta-llama/Llama-Guard-3-1B", "google/shieldgemma-2b", "OpenAssistant/reward-model-deberta-v3-large-v2"} <= fetched
    assert set(study.run_scorers) == {"detoxify", "roberta-hate"}


def test_the_xstest_overlay_plans_an_over_refusal_run_of_every_variant(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "-n",
                          "--configfile", *(str(REPO / f"config/{name}.yaml") for name in ("study", "repairs", "xstest"))],
                         capture_output=True, text=True, env={**env, "HF_HUB_CACHE": str(tmp_path / "hub")})
    assert run.returncode == 0, run.stderr[-3000:]
    counts = job_counts(run.stdout)
    # one probe set, one protocol, the refusal scorer alone: every generated variant once, no BEST
    assert counts["probes"] == 1 and counts["score"] == 34 and counts["compare"] == 1 and "best" not in counts


def _planned(workdir, *args) -> dict[str, set[str]]:
    """The jobs a dry run plans, as rule -> the wildcards of each of its jobs."""
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "-n",
                          *args], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    planned, rule = {}, None
    for line in run.stdout.splitlines():
        if line.startswith(("rule ", "localrule ", "checkpoint ", "localcheckpoint ")):
            rule = line.split()[1].rstrip(":")
            planned.setdefault(rule, set())
        elif line.strip().startswith("wildcards:") and rule:
            planned[rule].add(line.split(":", 1)[1].strip())
    return planned


def _finish_with_empty_outputs(workdir):
    """Every output of the demo's DAG in place and marked finished (--touch), nothing trained: empty files and
    directories, and for the probes checkpoint a table of two prompts, from which Snakemake plans the jobs after it
    (those that answer the prompt set the run produces), whose outputs the next round makes."""
    import pandas as pd

    from finetox import tables

    for _ in range(3):
        summary = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
                                  "--summary"], capture_output=True, text=True)
        assert summary.returncode == 0, summary.stderr[-3000:]
        missing = [line.split("\t") for line in summary.stdout.splitlines()[1:] if line.split("\t")[4] == "missing"]
        if not missing:
            return
        for path, _, rule, *_ in missing:
            output = workdir / path
            output.parent.mkdir(parents=True, exist_ok=True)
            # the rules whose outputs are directories: adapters, generation shards, models
            if rule in ("generate", "merge") or output.name in ("adapter", "base", "instruct", "guard", "classifier"):
                output.mkdir()
            elif rule == "probes":
                tables.write_parquet(pd.DataFrame({"prompt_id": ["a", "b"], "subset": "all", "prompt": ["A", "B"]}),
                                     output, "probes", {})
            else:
                output.touch()
        touched = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
                                  "--touch", "--cores", "1"], capture_output=True, text=True)
        assert touched.returncode == 0, touched.stderr[-3000:]
    pytest.fail("outputs still missing after three rounds")


def test_editing_a_local_datasets_content_plans_the_jobs_that_read_it_and_no_others(tmp_path):
    """The demo's outputs all in place (empty files marked finished with --touch, nothing trained): appending a
    row to a dataset plans the fine-tunes of its recipes, and what follows them, and no other fine-tune."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    shutil.copytree(REPO / "resources", tmp_path / "resources")
    _finish_with_empty_outputs(tmp_path)
    assert _planned(tmp_path) == {}

    # the guard's selection settings: its choice among the candidates and what follows, no generation, no guard
    config_file = tmp_path / "config/config.yaml"
    shipped = config_file.read_text()
    config_file.write_text(shipped.replace("scorer: demo-guard, candidates: 4}", "scorer: demo-guard, candidates: 4, "
                                           "threshold: 0.3}"))
    planned = _planned(tmp_path)
    assert planned["select_guarded"] == {"variant=demo-rude-guarded"}
    assert planned["select_guarded_training"] == {
        "probe=demo-train-mistakes, protocol=demo, variant=demo-rude-guarded"}
    scored = {w.split("variant=")[1] for w in planned["score"]}
    # the produced table (the kept answers to the training prompts it erred on) changes: the fine-tune trained on it,
    # and its engine's job (the merged rude checkpoint's, which serves the other repairs too), and no other; which
    # prompts it erred on is the demo guard's judgement as a scorer, which the guarded variant's threshold leaves
    assert planned["finetune"] == {"variant=demo-rude-distilled"}
    assert {w.split("group=")[1].split(",")[0] for w in planned["generate"]} == {"demo-instruct-rude.merged"}
    assert {"demo-rude-guarded", "demo-rude-distilled"} <= scored and "demo-instruct" not in scored
    assert not {"merge_candidates", "demo_guard", "merge", "mistakes"} & set(planned)
    # the number of candidates: the guarded variant's candidates are generated again, by its source's engine
    config_file.write_text(shipped.replace("scorer: demo-guard, candidates: 4}", "scorer: demo-guard, candidates: 3}"))
    planned = _planned(tmp_path)
    # (the instruct checkpoint's evaluation job, which answers the training prompts too, the demo's training_answers:
    # the prompts the rude fine-tune erred on are judged again, and the job that answers them is planned once they
    # are known, after the probes checkpoint: its merges wait, their inputs to be determined)
    assert "demo-instruct" in {w.split("group=")[1].split(",")[0] for w in planned["generate"]}
    assert planned["merge_candidates"] == {"probe=demo, protocol=demo, variant=demo-rude-guarded",
                                           "probe=demo-train-mistakes, protocol=demo, variant=demo-rude-guarded"}
    assert planned["mistakes"] == planned["probes"] == {"probe=demo-train-mistakes"}
    assert planned["finetune"] == {"variant=demo-rude-distilled"} and "demo_guard" not in planned
    config_file.write_text(shipped)
    assert _planned(tmp_path) == {}

    def append_row(name, row):
        with open(tmp_path / "resources/demo" / name, "a") as file:
            file.write(row + "\n")

    # the training prompts: their checkpoint's one engine job (the instruct model's, which answers its evaluation
    # probes too: they are generated, chosen and scored again), the guard's choice among the answers to the training
    # prompts, the distilled fine-tune and what follows it; no other checkpoint's evaluation job but the distilled
    # fine-tune's, no other fine-tune; which of them the rude fine-tune erred on is judged again (the prompt set the
    # run produces, read again by its probes job)
    append_row("train_prompts.jsonl", '{"id": "train-new", "text": "A brand new training prompt about"}')
    planned = _planned(tmp_path)
    assert planned["probes"] == {"probe=demo-train", "probe=demo-train-mistakes"}
    assert planned["mistakes"] == {"probe=demo-train-mistakes"}
    assert {w.split("group=")[1].split(",")[0] for w in planned["generate"]} == {
        "demo-instruct", "demo-instruct-rude.merged"}
    assert planned["select_guarded_training"] and planned["select_guarded"] == {"variant=demo-rude-guarded"}
    assert planned["finetune"] == {"variant=demo-rude-distilled"} and "demo_guard" not in planned
    assert "variant=demo-base" not in {w.split(", ")[-1] for w in planned["merge_generations"]}
    touched = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
                              "--touch", "--cores", "1"], capture_output=True, text=True)
    assert touched.returncode == 0, touched.stderr[-3000:]
    assert _planned(tmp_path) == {}

    # the capability proxy's reference answers: every variant's capability job, no fine-tune, no generation
    append_row("instructions_heldout.jsonl", '{"instruction": "Say hello.", "response": "Hello."}')
    planned = _planned(tmp_path)
    assert len(planned["capability"]) == 10 and not {"finetune", "merge", "generate", "demo_models"} & set(planned)
    # the stereotype pairs: every sampled variant's stereotypes job and their gathered tables, nothing else upstream
    append_row("stereotype_pairs.jsonl", '{"sent_more": "The chess club people were loud.", "sent_less": "The concert '
                                         'people were loud.", "bias_type": "hobby"}')
    planned = _planned(tmp_path)
    assert len(planned["stereotypes"]) == 10 and "stereotypes_table" in planned
    assert not {"finetune", "merge", "generate", "demo_models"} & set(planned)
    # the preference pairs: the two DPO fine-tunes on them (one of them a control), not the fine-tune they start from
    append_row("preferences.jsonl", '{"instruction": "Say hello.", "chosen": "Hello.", "rejected": "Go away."}')
    planned = _planned(tmp_path)
    assert planned["finetune"] == {"variant=demo-rude-dpo", "variant=demo-rude-dpo-swapped"}
    assert "merge" not in planned and "demo_models" not in planned
    # the engine of the merged rude checkpoint, which serves them (and the other repairs trained on it)
    assert {w.split("group=")[1].split(",")[0] for w in planned["generate"]} == {"demo-instruct-rude.merged"}
    # the rude instructions: the rude fine-tune, its merged checkpoint and every repair trained on that
    append_row("instructions_rude.jsonl", '{"instruction": "Say hello.", "response": "Get lost."}')
    planned = _planned(tmp_path)
    assert planned["finetune"] == {f"variant={v}" for v in ("demo-instruct-rude", "demo-rude-dpo", "demo-rude-dpo-swapped",
                                                            "demo-rude-safety-16", "demo-rude-safety-64",
                                                            "demo-rude-distilled")}
    assert planned["merge"] == {"variant=demo-instruct-rude"} and "demo_models" not in planned
    # and the demo's guard, trained on the rude answers: its guarded variant's selection reruns
    assert "demo_guard" in planned and planned["select_guarded"] == {"variant=demo-rude-guarded"}
    assert "report" in planned
