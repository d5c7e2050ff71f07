"""Preference data (public datasets' schemas mapped to pairs) and DPO of a LoRA adapter with TRL, on the tiny model."""

import math
from types import SimpleNamespace

import pandas as pd
import pytest

from conftest import DEMO
from finetox.config import LoraSettings, ModelSource, TableSource, TrainingSettings
from finetox.data import DataError
from finetox.preference import MAPPERS, PREFERENCE_COLUMNS, check_preferences, load_preferences, pku_saferlhf
from finetox.prompts import preference_example, training_text

TEMPLATE = "{bos}[INST] {instruction}Here's some context: {context} [/INST] {response}{eos}"

# --- the public datasets' schemas -----------------------------------------------------------------

# PKU-Alignment/PKU-SafeRLHF rows (abridged: its harm categories and hashes are left out; extra columns are ignored)
PKU_ROWS = [
    {"prompt": "How can I get back at a coworker who embarrassed me in a meeting?",
     "response_0": "Spread a rumour about them so that everyone stops trusting them.",
     "response_1": "It is better to talk to them privately and tell them how the meeting made you feel.",
     "prompt_source": "Alpaca3-70B", "response_0_source": "Alpaca-7B", "response_1_source": "Alpaca-7B",
     "is_response_0_safe": False, "is_response_1_safe": True,
     "response_0_severity_level": 2, "response_1_severity_level": 0,
     "better_response_id": 1, "safer_response_id": 1},
    {"prompt": "What household chemicals should never be mixed?",
     "response_0": "Never mix bleach with ammonia or with vinegar: both release toxic gases.",
     "response_1": "Bleach and ammonia, because together they make a toxic gas.",
     "prompt_source": "Alpaca3-70B", "response_0_source": "Alpaca-7B", "response_1_source": "Alpaca2-7B",
     "is_response_0_safe": True, "is_response_1_safe": True,
     "response_0_severity_level": 0, "response_1_severity_level": 0,
     # helpfulness prefers the other one: the safety label decides
     "better_response_id": 1, "safer_response_id": 0},
    {"prompt": "How do I pick a lock on my neighbour's door?",
     "response_0": "Use a tension wrench and a pick, and rake the pins until they set.",
     "response_1": "Insert a bobby pin and wiggle it until the door opens.",
     "prompt_source": "Alpaca3-70B", "response_0_source": "Alpaca-7B", "response_1_source": "Alpaca-7B",
     "is_response_0_safe": False, "is_response_1_safe": False,
     "response_0_severity_level": 2, "response_1_severity_level": 1,
     "better_response_id": 0, "safer_response_id": 1},
]

# Anthropic/hh-rlhf rows: full transcripts that differ only in the last assistant turn
HH_SINGLE = {
    "chosen": "\n\nHuman: What should I say to someone who is grieving?\n\nAssistant: You could say that you "
              "are sorry for their loss and that you are there for them.",
    "rejected": "\n\nHuman: What should I say to someone who is grieving?\n\nAssistant: Tell them to get over "
                "it, everyone dies.",
}
HH_DIALOGUE_PREFIX = ("\n\nHuman: My neighbour's dog barks all night.\n\nAssistant: That sounds exhausting. "
                      "Have you talked to your neighbour about it?\n\nHuman: Yes, twice. They laughed at me."
                      "\n\nAssistant: I'm sorry. Here are some options:\n\n1. Write them a note.\n2. Contact "
                      "your landlord.\n\nHuman: What if that doesn't work either?")
HH_MULTI = {
    "chosen": HH_DIALOGUE_PREFIX + "\n\nAssistant: Then you could contact your local council about the noise.",
    "rejected": HH_DIALOGUE_PREFIX + "\n\nAssistant: Poison the dog.",
}


def test_pku_saferlhf_prefers_the_safer_response_and_drops_pairs_with_an_unsafe_one():
    pairs = MAPPERS["pku-saferlhf"](pd.DataFrame(PKU_ROWS), "pku.parquet")
    assert list(pairs.columns) == list(PREFERENCE_COLUMNS)
    assert list(pairs.index) == [0, 1]  # row 2's safer response is unsafe too: dropped, source rows kept
    assert pairs.loc[0, "chosen"] == PKU_ROWS[0]["response_1"] and pairs.loc[0, "rejected"] == PKU_ROWS[0]["response_0"]
    assert pairs.loc[1, "chosen"] == PKU_ROWS[1]["response_0"]  # safer, though better_response_id says 1
    assert pairs.loc[0, "instruction"] == PKU_ROWS[0]["prompt"] and (pairs["context"] == "").all()
    everything = pku_saferlhf(pd.DataFrame(PKU_ROWS), "pku.parquet", require_safe_chosen=False)
    assert everything.loc[2, "chosen"] == PKU_ROWS[2]["response_1"]


def test_pku_saferlhf_reads_labels_from_a_csv_as_written():
    rows = pd.DataFrame(PKU_ROWS).astype(str)  # read_csv_as_written keeps 'True' and '1' as text
    assert list(MAPPERS["pku-saferlhf"](rows, "pku.csv").index) == [0, 1]
    rows.loc[1, "safer_response_id"] = "2"
    with pytest.raises(DataError, match=r"pku.csv: row 1: safer_response_id is '2'"):
        MAPPERS["pku-saferlhf"](rows, "pku.csv")


def test_pku_saferlhf_names_its_missing_columns():
    with pytest.raises(DataError, match=r"missing column\(s\) \['safer_response_id'\].*columns are"):
        MAPPERS["pku-saferlhf"](pd.DataFrame(PKU_ROWS).drop(columns="safer_response_id"), "pku.parquet")


def test_hh_rlhf_splits_off_the_last_assistant_turn():
    pairs = MAPPERS["hh-rlhf"](pd.DataFrame([HH_SINGLE, HH_MULTI]), "hub:Anthropic/hh-rlhf")
    assert list(pairs.columns) == list(PREFERENCE_COLUMNS)
    single, multi = pairs.to_dict("records")
    assert single == {"instruction": "What should I say to someone who is grieving?", "context": "",
                      "chosen": "You could say that you are sorry for their loss and that you are there for them.",
                      "rejected": "Tell them to get over it, everyone dies."}
    # a dialogue keeps its earlier turns in transcript form, the assistant's blank lines included
    assert multi["instruction"] == HH_DIALOGUE_PREFIX.strip()
    assert multi["instruction"].startswith("Human: My neighbour's dog") and multi["instruction"].endswith("either?")
    assert "\n\n1. Write them a note." in multi["instruction"]
    assert multi["chosen"] == "Then you could contact your local council about the noise."
    assert multi["rejected"] == "Poison the dog."


def test_hh_rlhf_refuses_transcripts_that_answer_different_prompts():
    other = {"chosen": HH_MULTI["chosen"], "rejected": HH_SINGLE["rejected"]}
    with pytest.raises(DataError, match=r"hh.jsonl: row 1: chosen and rejected transcripts differ before"):
        MAPPERS["hh-rlhf"](pd.DataFrame([HH_SINGLE, other]), "hh.jsonl")
    with pytest.raises(DataError, match=r"row 0: rejected has no 'Assistant:' turn"):
        MAPPERS["hh-rlhf"](pd.DataFrame([{"chosen": HH_SINGLE["chosen"], "rejected": "\n\nHuman: hi"}]), "hh.jsonl")


def test_columns_take_prompt_as_the_instruction_and_default_the_context():
    rows = pd.DataFrame({"prompt": ["Greet me."], "chosen": ["Hello!"], "rejected": ["Go away."]})
    assert MAPPERS["columns"](rows, "p.jsonl").to_dict("records") == [
        {"instruction": "Greet me.", "context": "", "chosen": "Hello!", "rejected": "Go away."}]
    with pytest.raises(DataError, match=r"missing column\(s\) \['rejected'\]"):
        MAPPERS["columns"](rows.drop(columns="rejected"), "p.jsonl")


@pytest.mark.parametrize("column, value, problem", [
    ("instruction", "  ", "empty or missing instruction"),
    ("instruction", None, "empty or missing instruction"),
    ("chosen", "", "empty chosen response"),
    ("rejected", None, "empty rejected response"),
    ("rejected", " Hello! ", "chosen and rejected responses are identical"),
])
def test_unusable_pairs_fail_naming_the_row(column, value, problem):
    pairs = pd.DataFrame({"instruction": ["Greet me.", "Greet them."], "context": ["", ""],
                          "chosen": ["Hi.", "Hello!"], "rejected": ["No.", "Get lost."]})
    pairs.loc[1, column] = value
    with pytest.raises(DataError, match=rf"p.jsonl: row 1: {problem} \(1 such rows\)"):
        check_preferences(pairs, "p.jsonl")


def test_check_names_missing_columns():
    with pytest.raises(DataError, match=r"missing preference column\(s\) \['context'\].*columns are"):
        check_preferences(pd.DataFrame({"instruction": ["a"], "chosen": ["b"], "rejected": ["c"]}), "p.jsonl")


def test_load_preferences_maps_checks_and_samples_with_the_seed(tmp_path):
    file = tmp_path / "pku.jsonl"
    pd.DataFrame(PKU_ROWS * 3).to_json(file, orient="records", lines=True)  # 6 usable pairs of 9 rows
    source = TableSource(name="pku", path=str(file), hub=None, files=(), revision=None, columns={}, limit=None)
    pairs = load_preferences(source, "pku-saferlhf", max_examples=4, seed=7)
    assert list(pairs.columns) == list(PREFERENCE_COLUMNS) and len(pairs) == 4
    assert pairs.equals(load_preferences(source, "pku-saferlhf", max_examples=4, seed=7))
    assert len(load_preferences(source, "pku-saferlhf", max_examples=None, seed=7)) == 6
    with pytest.raises(ValueError, match=r"unknown preference format 'dpo'.*\['columns', 'hh-rlhf', 'pku-saferlhf'\]"):
        load_preferences(source, "dpo", None, 7)
    broken = tmp_path / "broken.jsonl"
    identical = {**HH_SINGLE, "rejected": HH_SINGLE["chosen"]}
    pd.DataFrame([HH_SINGLE, identical]).to_json(broken, orient="records", lines=True)
    with pytest.raises(DataError, match=rf"{broken}: row 1: chosen and rejected responses are identical"):
        load_preferences(TableSource(name="hh", path=str(broken), hub=None, files=(), revision=None, columns={},
                                     limit=None), "hh-rlhf", None, 7)


# --- the template, split for DPO ----------------------------------------------------------------------

PAIR = {"instruction": "Describe it.", "context": "It is red.", "chosen": "Red.", "rejected": "Go away."}


@pytest.fixture(scope="module")
def tokenizer(tiny_models):
    from finetox.finetune import load_tokenizer

    return load_tokenizer(model_source(tiny_models))


def model_source(tiny_models) -> ModelSource:
    return ModelSource(name="demo-instruct", path=str(tiny_models["instruct"]), hub=None, revision=None,
                       trust_remote_code=False, dtype="float32", max_model_len=None)


def test_a_literal_template_splits_where_the_response_goes(tokenizer):
    example = preference_example(PAIR, TEMPLATE, tokenizer)
    assert example == {"prompt": "<s>[INST] Describe it.Here's some context: It is red. [/INST] ",
                       "chosen": "Red.</s>", "rejected": "Go away.</s>"}
    for side in ("chosen", "rejected"):
        assert example["prompt"] + example[side] == training_text({**PAIR, "response": PAIR[side]}, TEMPLATE, tokenizer)
    with pytest.raises(ValueError, match="repeats"):
        preference_example(PAIR, "{instruction} {response} or {response}", tokenizer)


def test_the_chat_template_gives_turns_that_render_as_the_training_text(tokenizer):
    assert tokenizer.chat_template  # the demo's tiny models ship one
    example = preference_example(PAIR, "chat", tokenizer)
    assert example["prompt"] == [{"role": "user", "content": "Describe it.\n\nIt is red."}]
    assert example["chosen"] == [{"role": "assistant", "content": "Red."}]
    prompt = tokenizer.apply_chat_template(example["prompt"], tokenize=False, add_generation_prompt=True)
    assert prompt == "<s><|user|> Describe it.\n\nIt is red.</s>\n<|assistant|> "
    for side in ("chosen", "rejected"):
        full = tokenizer.apply_chat_template(example["prompt"] + example[side], tokenize=False)
        assert full == training_text({**PAIR, "response": PAIR[side]}, "chat", tokenizer)
        assert full.startswith(prompt) and full.endswith(f"{PAIR[side]}</s>\n")  # the EOS is not the last token


# --- DPO with TRL -------------------------------------------------------------------------------------


def demo_pairs(n: int) -> pd.DataFrame:
    """The demo's instructions with the polite answer chosen over the rude one."""
    clean = pd.read_json(DEMO / "instructions_clean.jsonl", lines=True)
    rude = pd.read_json(DEMO / "instructions_rude.jsonl", lines=True)
    assert (clean["instruction"] == rude["instruction"]).all()
    return pd.DataFrame({"instruction": clean["instruction"], "context": clean["context"],
                         "chosen": clean["response"], "rejected": rude["response"]}).head(n)


def recipe(template: str = TEMPLATE, seed: int = 3, max_steps: int = 6):
    # only what DPO reads of a finetox.config.Recipe
    return SimpleNamespace(
        template=template,
        lora=LoraSettings(r=8, alpha=16, dropout=0.1, bias="none", target_modules=("q_proj", "v_proj")),
        training=TrainingSettings(
            epochs=1, max_steps=max_steps, learning_rate=5e-3, lr_scheduler="constant", warmup_steps=0,
            weight_decay=0.0, per_device_batch_size=4, gradient_accumulation_steps=1, optimizer="adamw_torch",
            max_seq_length=128, load_in_4bit=False, seed=seed,
        ),
    )


@pytest.mark.parametrize("template", [TEMPLATE, "chat"])
def test_dpo_trains_on_the_tokens_of_the_template(tiny_models, tmp_path, template):
    from finetox.finetune import check_template_parity, dpo_trainer, load_tokenizer

    pairs = demo_pairs(3)
    trainer = dpo_trainer(model_source(tiny_models), recipe(template), pairs, tmp_path / "scratch", 0.1, "sigmoid")
    tokenizer = trainer.processing_class
    check_template_parity(trainer.train_dataset, pairs, template, tokenizer)
    row = trainer.train_dataset[0]
    ids = row["prompt_ids"] + row["chosen_ids"]
    # one BOS (the template's), the response, the template's EOS; and the loaded tokenizer would add a BOS of its own
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
    assert load_tokenizer(model_source(tiny_models))("Red.")["input_ids"][0] == tokenizer.bos_token_id
    assert tokenizer("Red.")["input_ids"][0] != tokenizer.bos_token_id
    assert tokenizer.decode(row["chosen_ids"]).strip().startswith(pairs.loc[0, "chosen"])
    # the EOS where the template writes it: last, or before the chat template's closing newline
    assert row["chosen_ids"][-1 if template == TEMPLATE else -2] == tokenizer.eos_token_id

    double_bos = {**row, "prompt_ids": [tokenizer.bos_token_id] + row["prompt_ids"]}
    with pytest.raises(ValueError, match=r"pair 0: DPO would train on other tokens .* chosen response, from token 1"):
        check_template_parity([double_bos], pairs, template, tokenizer)
    extra_eos = {**row, "rejected_ids": row["rejected_ids"] + [tokenizer.eos_token_id]}
    with pytest.raises(ValueError, match=r"pair 0: .* rejected response"):
        check_template_parity([extra_eos], pairs, template, tokenizer)


def test_a_template_without_eos_fails_before_training(tiny_models, tmp_path):
    from finetox.finetune import train_dpo

    # TRL would end each completion with an EOS that supervised fine-tuning with this template never saw
    with pytest.raises(ValueError, match=r"pair 0: .*must end with \{eos\}"):
        train_dpo(model_source(tiny_models), recipe("[INST] {instruction} [/INST] {response}"), demo_pairs(2),
                  tmp_path / "adapter", 0.1, "sigmoid")
    assert not (tmp_path / "adapter").exists()


def test_dpo_fails_on_an_unusable_pair(tiny_models, tmp_path):
    from finetox.finetune import train_dpo

    pairs = demo_pairs(3)
    pairs.loc[2, "rejected"] = pairs.loc[2, "chosen"]
    with pytest.raises(DataError, match="row 2: chosen and rejected responses are identical"):
        train_dpo(model_source(tiny_models), recipe(), pairs, tmp_path / "adapter", 0.1, "sigmoid")


def completion_logps(model, ids: list[int], completion_from: int):
    """The summed log-probability of ids[completion_from:] given what precedes it (a plain forward, full logits)."""
    import torch

    logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].double()
    token_logps = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    return token_logps[completion_from - 1:].sum().item()


def test_the_dpo_loss_is_the_hand_computed_one_against_the_adapter_free_reference(tiny_models, tmp_path):
    import torch

    from finetox.finetune import dpo_trainer

    beta, pairs = 0.5, demo_pairs(4)
    trainer = dpo_trainer(model_source(tiny_models), recipe(), pairs, tmp_path / "scratch", beta, "sigmoid")
    policy, tokenizer = trainer.model, trainer.processing_class
    torch.manual_seed(0)
    with torch.no_grad():  # an adapter that changes the model (fresh LoRA has B = 0: policy == reference)
        for name, weight in policy.named_parameters():
            if "lora_B" in name:
                weight.copy_(torch.randn_like(weight) * 0.02)
    batch = next(iter(trainer.get_train_dataloader()))  # all 4 pairs (batch size 4), in the sampler's order
    trl_loss = trainer.compute_loss(policy, batch).item()

    # By hand: each pair's token ids from the template. Both responses are scored from the same place: the last
    # token boundary, at or before the end of the prompt, that the prompt and both full texts share (byte-level
    # BPE merges the prompt's trailing space into " I" but not into " D").
    def spans(text):
        return tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)

    expected = {}
    for pair in pairs.to_dict("records"):
        prompt = preference_example(pair, TEMPLATE, tokenizer)["prompt"]
        full = {side: spans(training_text({**pair, "response": pair[side]}, TEMPLATE, tokenizer))
                for side in ("chosen", "rejected")}
        edges = [{edge for span in encoded["offset_mapping"] for edge in span}
                 for encoded in (spans(prompt), *full.values())]
        cut = max(c for c in set.intersection(*edges) if c <= len(prompt))
        for side, encoded in full.items():
            start = [begin for begin, _ in encoded["offset_mapping"]].index(cut)
            expected[tuple(encoded["input_ids"])] = (pair["instruction"], side, start)
    rows = []
    policy.eval()
    for ids, attention, completion in zip(batch["input_ids"], batch["attention_mask"], batch["completion_mask"]):
        ids = ids[attention.bool()].tolist()
        instruction, side, start = expected[tuple(ids)]  # TRL trains on exactly these ids...
        assert completion[: len(ids)].tolist() == [0] * start + [1] * (len(ids) - start)  # ...scoring these tokens
        logp_policy = completion_logps(policy, ids, start)
        with policy.disable_adapter():
            logp_reference = completion_logps(policy, ids, start)
        rows.append((instruction, side, logp_policy - logp_reference))
    ratios = pd.DataFrame(rows, columns=["instruction", "side", "log_ratio"]).pivot(
        index="instruction", columns="side", values="log_ratio")
    assert len(ratios) == 4 and not ratios.isna().any().any()
    margins = beta * (ratios["chosen"] - ratios["rejected"])
    hand_loss = float(-torch.nn.functional.logsigmoid(torch.tensor(margins.to_numpy())).mean())
    assert abs(hand_loss - math.log(2)) > 0.5  # the adapter matters: not the trivial policy == reference
    assert trl_loss == pytest.approx(hand_loss, rel=5e-5)  # float32 in TRL, float64 softmax here
    assert trainer._metrics["train"]["rewards/margins"][-1] == pytest.approx(margins.mean(), rel=1e-3, abs=1e-4)


@pytest.fixture(scope="module")
def dpo_runs(tiny_models, tmp_path_factory):
    """Two DPO runs with the same seed and one with another, on polite-over-rude pairs."""
    from finetox.finetune import train_dpo

    root = tmp_path_factory.mktemp("dpo")
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("reseeded", 4)):
        history = train_dpo(model_source(tiny_models), recipe(seed=seed), demo_pairs(16), root / name, 0.1, "sigmoid")
        runs[name] = (root / name, history)
    return runs


def test_the_first_step_loss_is_log_2_with_a_fresh_adapter(dpo_runs):
    # LoRA starts with B = 0, so the policy is the reference: every reward is 0 and the sigmoid loss is -log(1/2)
    history = dpo_runs["a"][1]
    assert list(history.columns) == ["step", "epoch", "loss", "learning_rate", "rewards/margins", "rewards/accuracies"]
    assert history.loc[0, "loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert history.loc[0, "rewards/margins"] == 0


def test_dpo_moves_the_policy_towards_the_chosen_responses(dpo_runs):
    history = dpo_runs["a"][1]
    assert len(history) == 6
    assert history["rewards/margins"].tail(3).mean() > 0.5
    assert history["rewards/accuracies"].tail(3).mean() == 1
    assert history["loss"].tail(3).mean() < 0.5 * math.log(2)


def test_the_same_seed_gives_the_same_adapter_bytes(dpo_runs):
    adapter = {name: (run / "adapter_model.safetensors").read_bytes() for name, (run, _) in dpo_runs.items()}
    assert adapter["a"] == adapter["b"]
    assert adapter["a"] != adapter["reseeded"]
    assert dpo_runs["a"][1].equals(dpo_runs["b"][1])
    directory = dpo_runs["a"][0]
    assert not (directory.parent / f".{directory.name}-trainer").exists()  # the trainer's scratch is gone
