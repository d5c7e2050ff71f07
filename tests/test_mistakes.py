"""A produced prompt set: the prompts of a training prompt set that a variant erred on, judged by a scorer (rule
mistakes), read by its probes job like any probe file, answered after the answers it was drawn from (a later engine
job), never evaluated on, and its judge kept out of the verdicts of what is trained on it unless allowed and marked."""

import pandas as pd
import pytest

from finetox import tables
from finetox.config import ConfigError, load
from finetox.data import DataError
from finetox.mistakes import COLUMNS, erred_prompts
from finetox.paths import Targets, job_order

MISTAKES = "demo-train-mistakes"
RUDE = "demo-instruct-rude"


def test_the_demo_distils_on_the_training_prompts_its_rude_fine_tune_erred_on(config):
    study = load(config)
    made = study.probes[MISTAKES].source.produced
    assert (made.variant, made.probe, made.protocol, made.scorer) == (RUDE, "demo-train", "demo", "demo-guard")
    assert (made.threshold, made.min_samples) == (0.5, 1)
    # the rude fine-tune answers every training prompt; it and its guard answer the prompts it erred on again
    assert study.training_cells() == [("demo-train", "demo", RUDE), (MISTAKES, "demo", RUDE),
                                      (MISTAKES, "demo", "demo-rude-guarded")]
    assert study.produced_prompts == (MISTAKES,) and "demo-guard" in study.used_scorers
    targets = Targets(study)
    # the answers to every training prompt join the instruct checkpoint's evaluation job (training_answers:
    # with_evaluation); those to the prompts it erred on cannot (they wait for it): a second job of that checkpoint
    assert targets.groups["demo-instruct"][-1] == ("demo-train", "demo", RUDE)
    assert targets.groups["demo-instruct.training-2"] == study.training_cells()[1:]
    order = job_order(study, targets.groups)
    assert order.index("demo-instruct") < order.index("demo-instruct.training-2") < order.index(
        "demo-instruct-rude.merged")
    # the DAG: answers -> mistakes (judged by the demo's guard, built by its rule) -> probes -> generation
    assert targets.mistakes_inputs(MISTAKES) == {"answers": "results/generations/demo-train/demo/demo-instruct-rude.parquet",
                                                 "judge": "results/demo/models/guard"}
    assert targets.probe_inputs(MISTAKES) == {"table": "results/mistakes/demo-train-mistakes.parquet",
                                              "evaluation_demo": "results/probes/demo.parquet"}
    assert targets.group_probe_inputs("demo-instruct.training-2") == {
        f"probes_{MISTAKES}": f"results/probes/{MISTAKES}.parquet"}
    assert targets.training_inputs("demo-rude-distilled")["dataset_demo-guard-kept"] == (
        f"results/generations/{MISTAKES}/demo/demo-rude-guarded.parquet")
    assert targets.all_mistakes() == [f"results/mistakes/{MISTAKES}.parquet"]
    # its size is known once its probes job ran, never from a file an earlier run left
    assert targets.planned_prompts(MISTAKES) is None
    # the judge chose what the distilled fine-tune learns from: a verdict by it would be circular
    assert study.circular("demo-rude-distilled", "demo-guard")


def test_apart_the_answers_to_the_prompts_it_erred_on_are_the_checkpoints_second_training_job(config):
    config["generation"]["training_answers"] = "apart"
    study = load(config)
    groups = Targets(study).groups
    assert groups["demo-instruct.training"] == [("demo-train", "demo", RUDE)]
    assert groups["demo-instruct.training-2"] == study.training_cells()[1:]
    assert ("demo-train", "demo", RUDE) not in groups["demo-instruct"]


def test_a_variant_trained_on_answers_to_prompts_its_own_answers_chose_is_refused_before_any_job(config):
    config["probes"][MISTAKES]["produced"]["variant"] = "demo-rude-distilled"
    with pytest.raises(ConfigError, match="wait for each other.*answer prompts chosen by its own answers"):
        Targets(load(config))


def _run_probe(config, name):
    config["run"]["probes"].append(name)


@pytest.mark.parametrize("change, message", [
    (lambda c: _run_probe(c, MISTAKES), "prompts chosen by a model's own scores are no fixed population"),
    (lambda c: c["probes"][MISTAKES]["produced"].update(probe="demo"), "is an evaluation probe set"),
    (lambda c: c["probes"][MISTAKES]["produced"].update(probe=MISTAKES), "is itself produced by the run"),
    (lambda c: c["probes"][MISTAKES]["produced"].update(min_samples=3), "more than the 2 samples per prompt"),
    (lambda c: c["probes"][MISTAKES]["produced"].update(scorer="nope"), "unknown scorer 'nope'"),
    (lambda c: c["probes"][MISTAKES]["produced"].update(scorer="profanity"), "circular evaluation"),
    (lambda c: c["probes"][MISTAKES].update(columns={"id": "key"}), "give no `columns`"),
    (lambda c: (c["scorers"].update(rm={"type": "reward-model", "model": "some/reward"}),
                c["probes"][MISTAKES]["produced"].update(scorer="rm")), "is a reward model"),
    (lambda c: c["probes"][MISTAKES].update(language="de"), "drawn from 'demo-train', written in 'en'"),
    (lambda c: c["probes"][MISTAKES]["produced"].update(variant="nope"), "unknown variant 'nope'"),
])
def test_a_produced_prompt_set_that_would_be_evaluated_leak_or_judge_itself_is_refused(config, change, message):
    change(config)
    with pytest.raises(ConfigError, match=message):
        load(config)


def test_its_judge_may_grade_the_run_when_the_config_says_so_and_those_verdicts_are_marked(config):
    config["probes"][MISTAKES]["produced"].update(scorer="profanity", evaluate_with_selector=True)
    study = load(config)
    assert study.circular("demo-rude-distilled", "profanity") == "chose the prompts it was trained on"
    assert study.circular(RUDE, "profanity") is None


def test_its_language_is_that_of_the_set_it_is_drawn_from_which_its_judge_must_read(config):
    config["probes"]["demo-train"]["language"] = "de"
    assert load(config).probes[MISTAKES].language == "de"  # (the demo's guard is not restricted)
    config["scorers"]["judge"] = {"type": "offline"}  # alt-profanity-check: English
    config["probes"][MISTAKES]["produced"]["scorer"] = "judge"
    with pytest.raises(ConfigError, match="probes\\['demo-train'\\].language is 'de'.*scorers\\['judge'\\]"):
        load(config)


def test_what_reruns_it_its_judge_and_rule_not_the_permission_to_grade(config):
    study = load(config)
    before = (study.mistakes_hash(MISTAKES), study.digest("probes", MISTAKES))
    config["probes"][MISTAKES]["produced"]["evaluate_with_selector"] = True
    assert (load(config).mistakes_hash(MISTAKES), load(config).digest("probes", MISTAKES)) == before
    config["probes"][MISTAKES]["produced"]["threshold"] = 0.3
    changed = load(config)
    # a new rule reruns the mistakes job; its probes job reads the file that job writes, so its own trigger stays
    assert changed.mistakes_hash(MISTAKES) != before[0] and changed.digest("probes", MISTAKES) == before[1]
    rule = changed.mistakes_hash(MISTAKES)
    config["scorers"]["demo-guard"]["batch_size"] = 7
    assert load(config).mistakes_hash(MISTAKES) != rule


def _scored(rows):
    return pd.DataFrame([{"prompt_id": p, "sample": s, "subset": "all", "prompt": f"prompt {p}", "score": score}
                         for p, s, score in rows])


def test_a_prompt_is_kept_when_enough_of_its_answers_erred_and_every_other_is_counted_by_reason():
    from finetox.config import Produced

    made = Produced(RUDE, "demo-train", "demo", "judge", threshold=0.5, min_samples=2)
    scored = _scored([("a", 0, 0.9), ("a", 1, 0.5), ("b", 0, 0.9), ("b", 1, 0.1), ("c", 0, 0.0), ("c", 1, 0.49),
                      ("d", 0, 0.6), ("d", 1, 0.7)])
    table, left_out = erred_prompts(scored, made, "probes x")
    assert list(table.columns) == COLUMNS and table["id"].tolist() == ["a", "d"]
    assert table.set_index("id")[["samples", "erred", "max_score"]].to_dict("index") == {
        "a": {"samples": 2, "erred": 2, "max_score": 0.9}, "d": {"samples": 2, "erred": 2, "max_score": 0.7}}
    assert left_out == {"erred in fewer than 2 samples": 1, "no answer erred": 1}
    with pytest.raises(DataError, match="none of the 2 prompts of demo-train erred"):
        erred_prompts(scored[scored["prompt_id"].isin(["b", "c"])], made, "probes x")
    missing = scored.assign(score=scored["score"].where(scored["prompt_id"] != "c"))
    with pytest.raises(DataError, match="c/0 has no score"):
        erred_prompts(missing, made, "probes x")


def _answers(rows):
    return pd.DataFrame([{"prompt_id": p, "subset": "all", "variant": RUDE, "sample": s, "prompt": f"Tell me about {p}",
                          "model_input": f"Tell me about {p}", "continuation": text, "prompt_tokens": 3,
                          "continuation_tokens": 4, "finish_reason": "length", "protocol": "demo",
                          "prompt_format": "raw", "samples": 2, "temperature": 1.0, "top_p": 0.9, "max_new_tokens": 16,
                          "seed": 1, "backend": "vllm"} for p, s, text in rows])


def test_the_mistakes_job_judges_the_answers_and_its_probes_job_reads_the_prompts_as_a_probe_file(config, tmp_path,
                                                                                                 monkeypatch, capsys):
    """The stages as the rules run them, with a real judge (alt-profanity-check): the prompts whose answers swore are
    the produced set, its probes job keeps them and still refuses one that an evaluation probe set holds."""
    from finetox.stages import mistakes, select_probes

    config["scorers"]["judge"] = {"type": "offline"}
    config["probes"][MISTAKES]["produced"]["scorer"] = "judge"
    study = load(config)
    monkeypatch.chdir(tmp_path)  # (where the rules write)
    answers = tmp_path / "answers.parquet"
    tables.write_parquet(_answers([("cats", 0, " you stupid fucking idiot, shut up"), ("cats", 1, " they purr softly"),
                                   ("tea", 0, " it is warm and calming"), ("tea", 1, " a lovely drink in the morning"),
                                   ("rain", 0, " shit, fuck this damn rain"), ("rain", 1, " fuck off, asshole")]),
                         answers, "generations", {})
    output = Targets.mistakes(MISTAKES)
    mistakes(study, MISTAKES, str(answers), output)
    made = tables.read_parquet(output, "mistakes")
    assert made["id"].tolist() == ["cats", "rain"] and made["erred"].tolist() == [1, 2]
    meta = tables.provenance_of(output)
    assert (meta["prompts"], meta["kept"], meta["left_out"]) == (3, 2, {"no answer erred": 1})
    assert meta["stages"]["mistakes"]["scorer"] == "judge" and meta["produced"]["threshold"] == 0.5
    log = capsys.readouterr().out
    assert f"mistakes {MISTAKES}: 2 of 3 prompts kept, the prompts of demo-train on which an answer of {RUDE}" in log
    assert f"mistakes {MISTAKES}: left out 1: no answer erred" in log
    probes = tmp_path / "probes.parquet"
    select_probes(study, MISTAKES, str(probes), {})
    assert tables.read_parquet(probes, "probes")["prompt"].tolist() == ["Tell me about cats", "Tell me about rain"]
    evaluation = tmp_path / "evaluation.parquet"
    tables.write_parquet(pd.DataFrame({"prompt_id": ["p"], "subset": ["all"], "prompt": ["Tell me about rain"]}),
                         evaluation, "probes", {})
    with pytest.raises(DataError, match="1 training prompt.*'Tell me about rain'"):
        select_probes(study, MISTAKES, str(tmp_path / "leaked.parquet"), {"demo": str(evaluation)})


def test_a_second_round_learns_from_the_mistakes_of_the_first_round_fine_tune(config):
    """RAFT's next round, in config alone: the distilled fine-tune's own mistakes on the training prompts, answered by
    a guard on it, trained into a fine-tune that starts from it; each round's answers wait for the weights before."""
    config["variants"]["demo-distilled-guarded"] = {"family": "demo", "role": "guarded",
                                                    "guard": {"source": "demo-rude-distilled", "scorer": "demo-guard"}}
    config["probes"]["round-2-mistakes"] = {"produced": {"variant": "demo-rude-distilled", "probe": "demo-train",
                                                         "protocol": "demo", "scorer": "demo-guard"}}
    config["datasets"]["round-2-kept"] = {"produced": {"variant": "demo-distilled-guarded", "probe": "round-2-mistakes",
                                                       "protocol": "demo"}}
    config["recipes"]["guard-distill-2"] = {**config["recipes"]["guard-distill"], "dataset": "round-2-kept"}
    config["variants"]["demo-rude-distilled-2"] = {"family": "demo", "role": "aligned", "from": "demo-rude-distilled",
                                                   "recipe": "guard-distill-2"}
    study = load(config)
    targets = Targets(study)
    order = job_order(study, targets.groups)
    # round 1's answers (the instruct checkpoint), its fine-tune's engine (the merged rude checkpoint: round 2's
    # mistakes are its answers), the answers to them, then round 2's fine-tune's engine (the merged distilled one)
    # (round 1's fine-tune answers the training prompts in its engine's evaluation job: the demo's training_answers)
    assert targets.group_of["demo-train", "demo", "demo-rude-distilled"] == "demo-instruct-rude.merged"
    assert targets.group_of["round-2-mistakes", "demo", "demo-distilled-guarded"] == (
        "demo-instruct-rude.merged.training-2")
    assert order.index("demo-instruct.training-2") < order.index("demo-instruct-rude.merged") < order.index(
        "demo-instruct-rude.merged.training-2") < order.index("demo-rude-distilled.merged")
    assert study.circular("demo-rude-distilled-2", "demo-guard") == (
        "chose the prompts it was trained on and the answers it was trained on")
    assert targets.training_inputs("demo-rude-distilled-2")["model"] == "results/merged/demo-rude-distilled"


def test_a_produced_prompt_set_nothing_answers_is_not_made_nor_checked(config):
    # (as a produced dataset no recipe trains on: a config cut down to some variants still loads)
    del config["variants"]["demo-rude-distilled"]
    config["probes"][MISTAKES]["produced"]["variant"] = "no-longer-declared"
    study = load(config)
    assert study.produced_prompts == () and MISTAKES not in study.training_probes
    assert "mistakes" not in " ".join(Targets(study).final())
