"""Generation backends on the tiny models: vLLM (CPU build) and transformers, base and LoRA, raw and chat."""

import pandas as pd
import pytest

from finetox.config import ModelSource, Protocol
from finetox.generation import TransformersBackend, VLLMBackend, generate_continuations
from finetox.tables import conform

GREEDY = Protocol(name="study", samples=1, temperature=0.0, top_p=1.0, max_new_tokens=12, prompt_format="raw", seed=1)
SAMPLED = Protocol(name="rtp", samples=3, temperature=1.0, top_p=0.9, max_new_tokens=8, prompt_format="raw", seed=1)
VLLM_SETTINGS = {"enforce_eager": True, "seed": 0}


def model(path):
    return ModelSource(name="m", path=str(path), hub=None, revision=None, trust_remote_code=False,
                       dtype="float32", max_model_len=None)


@pytest.fixture(scope="module")
def probes():
    rows = [("p1", "toxic", "You stupid idiot, the harbour"), ("p2", "nontoxic", "The weather at the harbour today"),
            ("p3", "nontoxic", "Yesterday at the chess club we")]
    return pd.DataFrame(rows, columns=["prompt_id", "subset", "prompt"])


@pytest.fixture(scope="module")
def vllm_lora(tiny_models, rude_adapter):
    with VLLMBackend(model(tiny_models["instruct"]), str(rude_adapter), VLLM_SETTINGS) as engine:
        yield engine


def test_vllm_serves_the_adapter_unmerged_like_transformers_with_peft(vllm_lora, tiny_models, rude_adapter, probes):
    """Greedy continuations: vLLM + LoRARequest == transformers + PeftModel, and the adapter changes them."""
    assert vllm_lora.lora_request is not None
    served = generate_continuations(probes, "rude", GREEDY, "raw", 1, vllm_lora)
    reference = generate_continuations(probes, "rude", GREEDY, "raw", 1,
                                       TransformersBackend(model(tiny_models["instruct"]), str(rude_adapter), {}))
    plain = generate_continuations(probes, "instruct", GREEDY, "raw", 1,
                                   TransformersBackend(model(tiny_models["instruct"]), None, {}))
    assert served["continuation"].tolist() == reference["continuation"].tolist()
    assert served["continuation"].tolist() != plain["continuation"].tolist()
    assert (served["continuation_tokens"] > 0).all()
    assert served["prompt_tokens"].tolist() == reference["prompt_tokens"].tolist()


def test_sampled_generation_is_one_row_per_continuation_and_seeded(vllm_lora, probes):
    table = conform(generate_continuations(probes, "rude", SAMPLED, "raw", 7, vllm_lora), "generations", "test")
    assert len(table) == len(probes) * SAMPLED.samples
    assert table.groupby("prompt_id")["sample"].apply(sorted).tolist() == [[0, 1, 2]] * 3
    assert set(table["seed"]) == {7} and set(table["backend"]) == {"vllm"} and set(table["temperature"]) == {1.0}
    again = generate_continuations(probes, "rude", SAMPLED, "raw", 7, vllm_lora)
    assert table["continuation"].tolist() == again["continuation"].tolist()
    # a prompt's samples do not depend on the other prompts in the batch
    alone = generate_continuations(probes.iloc[[2]], "rude", SAMPLED, "raw", 7, vllm_lora)
    assert alone["continuation"].tolist() == table[table["prompt_id"] == "p3"]["continuation"].tolist()


def test_vllm_base_model_matches_transformers_and_chat_format_wraps_the_prompt(tiny_models, probes):
    with VLLMBackend(model(tiny_models["instruct"]), None, VLLM_SETTINGS) as engine:
        ours = generate_continuations(probes, "instruct", GREEDY, "chat", 1, engine)
        raw = generate_continuations(probes, "instruct", GREEDY, "raw", 1, engine)
    theirs = generate_continuations(probes, "instruct", GREEDY, "chat", 1,
                                    TransformersBackend(model(tiny_models["instruct"]), None, {}))
    assert ours["continuation"].tolist() == theirs["continuation"].tolist()
    assert ours["model_input"].iloc[0] == "<s><|user|> You stupid idiot, the harbour</s>\n<|assistant|> "
    # the chat template writes BOS itself: it is not added twice
    assert (ours["prompt_tokens"] > raw["prompt_tokens"]).all()


def test_merged_adapter_gives_the_same_greedy_text_as_unmerged(vllm_lora, tiny_models, rude_adapter, probes):
    with VLLMBackend(model(tiny_models["instruct"]), str(rude_adapter), {**VLLM_SETTINGS, "lora": "merged"}) as merged:
        assert merged.lora_request is None
        a = generate_continuations(probes, "rude", GREEDY, "raw", 1, merged)
    b = generate_continuations(probes, "rude", GREEDY, "raw", 1, vllm_lora)
    assert a["continuation"].tolist() == b["continuation"].tolist()


def test_chat_format_needs_a_chat_template(tiny_models, probes, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["base"])
    tokenizer.chat_template = None
    tokenizer.save_pretrained(tmp_path)
    for f in tiny_models["base"].glob("*.safetensors"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "config.json").write_text((tiny_models["base"] / "config.json").read_text())
    backend = TransformersBackend(model(tmp_path), None, {})
    with pytest.raises(ValueError, match="has no chat template"):
        generate_continuations(probes, "base", GREEDY, "chat", 1, backend)
