"""Produced tables: a recipe's dataset made by the run (a guarded variant's answers to training prompts), generated
by its checkpoint's engine job (a job of their own where that would make a cycle), refused on evaluation prompts (by
name at load, by content at the job), and read as the kept answers only, counted."""

import pandas as pd
import pytest

from finetox import tables
from finetox.config import ConfigError, load
from finetox.data import DataError
from finetox.mixes import produced_instructions
from finetox.paths import TRAINING_GROUP, Targets, job_order, trained_on

TRAIN = ("demo-train", "demo")


@pytest.fixture
def config(config):
    """The demo's config with its distillation on every training prompt (the demo distils on the prompts its rude
    fine-tune erred on, a produced prompt set: tests/test_mistakes.py)."""
    config["datasets"]["demo-guard-kept"]["produced"]["probe"] = "demo-train"
    return config


def test_a_distillation_trains_on_answers_to_its_training_prompts_from_the_checkpoints_one_engine(config):
    study = load(config)
    assert study.training_cells() == [(*TRAIN, "demo-instruct-rude"), (*TRAIN, "demo-rude-guarded")]
    assert study.training_probes == ("demo-train",) and "demo-train" not in study.run_probes
    targets = Targets(study)
    # the instruct checkpoint's one engine job answers its evaluation probes, then the training prompts (the demo's
    # generation.training_answers: with_evaluation; the distilled fine-tune is served by another checkpoint, the
    # merged rude fine-tune's: no cycle)
    cells = targets.groups["demo-instruct"]
    assert cells[-2:] == study.training_cells() and cells[:-2] == [c for c in study.evaluation_cells()
                                                                   if c[2] in targets.members("demo-instruct")]
    assert not [group for group in targets.groups if group.endswith(TRAINING_GROUP)]
    assert targets.group_probe_inputs("demo-instruct") == {"probes_demo": "results/probes/demo.parquet",
                                                           "probes_demo-train": "results/probes/demo-train.parquet"}
    assert targets.shards(*TRAIN, "demo-rude-guarded", {"demo": 50, "demo-train": 60}) == [
        "results/generations/shards/demo-instruct/0"]
    assert all(probe == "demo" for probe, _, _ in study.evaluation_cells())
    # the produced dataset is a DAG edge: the guarded variant's kept answers, the distilled fine-tune's input
    kept = "results/generations/demo-train/demo/demo-rude-guarded.parquet"
    assert targets.training_inputs("demo-rude-distilled")["dataset_demo-guard-kept"] == kept
    assert targets.selection("demo-train", "demo", "demo-rude-guarded") in targets.all_selections()
    # the training prompts' probes job reads the evaluation probes, to refuse any it repeats
    assert targets.probe_inputs("demo-train")["evaluation_demo"] == "results/probes/demo.parquet"
    # not scored, not compared: no score table of the training prompts
    assert not [p for p in targets.all_scores() if "demo-train" in p]
    assert study.comparisons["demo-instruct-rude_vs_demo-rude-distilled"].kind == "finetuned_vs_aligned"


def test_answers_that_a_variant_of_the_same_engine_trains_on_are_a_job_of_their_own(config):
    # distilled into the instruct model itself: its engine serves the distilled adapter, which waits for the answers
    config["variants"]["demo-instruct-distilled"] = {"family": "demo", "role": "aligned", "model": "demo-instruct",
                                                     "recipe": "guard-distill"}
    study = load(config)
    targets = Targets(study)
    assert targets.groups["demo-instruct.training"] == study.training_cells()
    assert "demo-instruct-distilled" in targets.members("demo-instruct")
    assert not set(study.training_cells()) & set(targets.groups["demo-instruct"])
    assert targets.group_probe_inputs("demo-instruct.training") == {"probes_demo-train": "results/probes/demo-train.parquet"}
    assert trained_on(study, "demo-instruct-distilled") == set(study.training_cells())
    # the order the jobs can run in: the training prompts' job first, the engine that serves the distilled adapter next
    order = job_order(study, targets.groups)
    assert order.index("demo-instruct.training") < order.index("demo-instruct")
    # the merged rude checkpoint's distilled fine-tune (the demo's) trains on them too: after both
    assert order.index("demo-instruct.training") < order.index("demo-instruct-rude.merged")


def test_by_default_training_answers_are_a_job_of_their_own(config):
    del config["generation"]["training_answers"]  # (the demo's: with_evaluation)
    study = load(config)
    assert study.generation["training_answers"] == "apart"
    targets = Targets(study)
    assert targets.groups["demo-instruct.training"] == study.training_cells()
    assert targets.group_probe_inputs("demo-instruct") == {"probes_demo": "results/probes/demo.parquet"}
    # their job's rerun trigger and inputs: another variant's sampling seed changes neither (its evaluation job's only)
    before = {group: (targets.group_settings(group), targets.group_inputs(group)) for group in targets.groups}
    config["variants"]["demo-instruct-reseeded"]["seed"] = 988
    after = Targets(load(config))
    changed = {group for group in after.groups
               if (after.group_settings(group), after.group_inputs(group)) != before[group]}
    assert changed == {"demo-instruct"}


def test_a_variant_trained_on_answers_that_need_its_own_weights_is_refused_before_any_job(config):
    config["datasets"]["demo-guard-kept"]["produced"]["variant"] = "demo-rude-distilled"
    with pytest.raises(ConfigError, match="generation jobs .*demo-instruct-rude.merged.* wait for each other"):
        Targets(load(config))


@pytest.mark.parametrize("change, message", [
    (lambda c: c["datasets"]["demo-guard-kept"]["produced"].update(probe="demo"), "is an evaluation probe set"),
    (lambda c: c["datasets"]["demo-guard-kept"]["produced"].update(variant="nope"), "unknown variant 'nope'"),
    (lambda c: c["variants"]["demo-base"].update(scores={"produced": {"variant": "demo-base", "probe": "demo",
                                                                         "protocol": "demo"},
                                                            "probe": "demo", "protocol": "demo", "scorer": "refusal"}),
     "only a dataset or a probe set can be produced"),
])
def test_a_produced_dataset_that_would_leak_or_cannot_be_made_is_refused(config, change, message):
    change(config)
    if "scores" in config["variants"]["demo-base"]:
        del config["variants"]["demo-base"]["model"]
    with pytest.raises(ConfigError, match=message):
        load(config)


def test_the_training_prompts_job_refuses_a_prompt_that_an_evaluation_probe_set_holds(config, tmp_path):
    from finetox.stages import select_probes

    (tmp_path / "train.jsonl").write_text('{"id": "t1", "text": "Tell me a story"}\n{"id": "t2", "text": "Same as a probe"}\n')
    config["probes"]["demo-train"]["path"] = str(tmp_path / "train.jsonl")
    study = load(config)
    evaluation = tmp_path / "evaluation.parquet"
    tables.write_parquet(pd.DataFrame({"prompt_id": ["p"], "subset": ["all"], "prompt": ["Same as a probe"]}),
                         evaluation, "probes", {})
    with pytest.raises(DataError, match="1 training prompt.*'Same as a probe'"):
        select_probes(study, "demo-train", str(tmp_path / "out.parquet"), {"demo": str(evaluation)})
    assert not (tmp_path / "out.parquet").exists()
    select_probes(study, "demo-train", str(tmp_path / "out.parquet"), {})
    assert len(tables.read_parquet(tmp_path / "out.parquet", "probes")) == 2


def test_a_produced_dataset_is_the_kept_answers_without_the_guards_refusals_or_empty_ones(config, tmp_path, capsys):
    study = load(config)
    source = study.recipes["guard-distill"].parts[0].dataset
    rows = [("a", " kind words", "length"), ("b", "I'm sorry", "filtered"), ("c", "  ", "stop"), ("d", " more", "stop")]
    frame = pd.DataFrame([{"prompt_id": p, "subset": "all", "variant": "demo-rude-guarded", "sample": 0, "prompt": f"prompt {p}",
                           "model_input": f"prompt {p}", "continuation": text, "prompt_tokens": 2,
                           "continuation_tokens": 2, "finish_reason": reason, "protocol": "demo", "prompt_format": "raw",
                           "samples": 1, "temperature": 1.0, "top_p": 0.9, "max_new_tokens": 16, "seed": 1,
                           "backend": "vllm"} for p, text, reason in rows])
    path = tmp_path / "kept.parquet"
    tables.write_parquet(frame, path, "generations", {})
    from dataclasses import replace

    examples = produced_instructions(replace(source, path=str(path)), None, seed=0)
    assert examples.to_dict("records") == [{"instruction": "prompt a", "context": "", "response": " kind words"},
                                           {"instruction": "prompt d", "context": "", "response": " more"}]
    assert "2 of 4 answers of demo-rude-guarded to demo-train/demo kept; left out: 1 filtered" in capsys.readouterr().out


def test_a_producer_asked_no_evaluation_probe_still_answers_its_training_prompts(config):
    # the guarded variant only makes training data: asked no run probe set (a selective run)
    config["probes"]["demo"]["variants"] = [v for v in config["variants"] if v != "demo-rude-guarded"]
    targets = Targets(load(config))
    assert targets.groups["demo-instruct"][-2:] == [(*TRAIN, "demo-instruct-rude"), (*TRAIN, "demo-rude-guarded")]
    assert not targets.variant_classes(guarded=True)  # no evaluation choice to make
    assert targets.selection(*TRAIN, "demo-rude-guarded") in targets.all_selections()
