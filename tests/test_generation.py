"""Generation backends on the tiny models: vLLM (CPU build) and transformers, base and LoRA, raw and chat."""

import pandas as pd
import pytest

from finetox.config import ModelSource, Protocol
from finetox.generation import TransformersBackend, VLLMBackend, generate_continuations
from finetox.tables import conform

GREEDY = Protocol(name="study", samples=1, temperature=0.0, top_p=1.0, max_new_tokens=12, prompt_format="raw", seed=1)
SAMPLED = Protocol(name="rtp", samples=3, temperature=1.0, top_p=0.9, max_new_tokens=8, prompt_format="raw", seed=1)
VLLM_SETTINGS = {"enforce_eager": True, "seed": 0, "gpu_memory_utilization": 0.2}


def model(path):
    return ModelSource(name="m", path=str(path), hub=None, revision=None, trust_remote_code=False,
                       dtype="float32", max_model_len=None)


@pytest.fixture(scope="module")
def probes():
    rows = [("p1", "toxic", "You stupid idiot, the harbour"), ("p2", "nontoxic", "The weather at the harbour today"),
            ("p3", "nontoxic", "Yesterday at the chess club we")]
    return pd.DataFrame(rows, columns=["prompt_id", "subset", "prompt"])


@pytest.fixture(scope="module")
def adapters(rude_adapter, clean_adapter):
    return {"rude": str(rude_adapter), "clean": str(clean_adapter)}


@pytest.fixture(scope="module")
def shared_engine(tiny_models, adapters):
    """One vLLM engine serving the instruct model alone and with either adapter."""
    with VLLMBackend(model(tiny_models["instruct"]), adapters, VLLM_SETTINGS) as engine:
        yield engine


@pytest.fixture(scope="module")
def reference(tiny_models, adapters):
    return TransformersBackend(model(tiny_models["instruct"]), adapters, {})


@pytest.mark.parametrize("adapter", [None, "rude", "clean"])
def test_one_vllm_engine_serves_the_model_and_each_adapter_like_transformers(shared_engine, reference, probes, adapter):
    """Greedy continuations: vLLM + LoRARequest == transformers + peft, for the model alone and each adapter."""
    assert set(shared_engine.lora_requests) == {"rude", "clean"}
    served = generate_continuations(probes, "v", GREEDY, "raw", 1, shared_engine, adapter=adapter)
    expected = generate_continuations(probes, "v", GREEDY, "raw", 1, reference, adapter=adapter)
    assert served["continuation"].tolist() == expected["continuation"].tolist()
    assert served["prompt_tokens"].tolist() == expected["prompt_tokens"].tolist()
    assert (served["continuation_tokens"] > 0).all()


def test_the_adapters_change_the_continuations(shared_engine, probes):
    texts = {a: generate_continuations(probes, "v", GREEDY, "raw", 1, shared_engine, adapter=a)["continuation"].tolist()
             for a in (None, "rude", "clean")}
    assert texts["rude"] != texts[None] and texts["rude"] != texts["clean"]


def test_sampled_generation_is_one_row_per_continuation_and_seeded(shared_engine, probes):
    table = conform(generate_continuations(probes, "rude", SAMPLED, "raw", 7, shared_engine, "rude"), "generations", "t")
    assert len(table) == len(probes) * SAMPLED.samples
    assert table.groupby("prompt_id")["sample"].apply(sorted).tolist() == [[0, 1, 2]] * 3
    assert set(table["seed"]) == {7} and set(table["backend"]) == {"vllm"} and set(table["temperature"]) == {1.0}
    again = generate_continuations(probes, "rude", SAMPLED, "raw", 7, shared_engine, "rude")
    assert table["continuation"].tolist() == again["continuation"].tolist()
    # a prompt's samples do not depend on the other prompts in the batch (or shard)
    alone = generate_continuations(probes.iloc[[2]], "rude", SAMPLED, "raw", 7, shared_engine, "rude")
    assert alone["continuation"].tolist() == table[table["prompt_id"] == "p3"]["continuation"].tolist()


def test_transformers_sampling_is_seeded_per_prompt(reference, probes):
    table = generate_continuations(probes, "rude", SAMPLED, "raw", 7, reference, "rude")
    alone = generate_continuations(probes.iloc[[2]], "rude", SAMPLED, "raw", 7, reference, "rude")
    assert alone["continuation"].tolist() == table[table["prompt_id"] == "p3"]["continuation"].tolist()
    other_seed = generate_continuations(probes, "rude", SAMPLED, "raw", 8, reference, "rude")
    assert other_seed["continuation"].tolist() != table["continuation"].tolist()


def test_chat_format_wraps_the_prompt_in_the_template(shared_engine, reference, probes):
    ours = generate_continuations(probes, "instruct", GREEDY, "chat", 1, shared_engine)
    theirs = generate_continuations(probes, "instruct", GREEDY, "chat", 1, reference)
    assert ours["continuation"].tolist() == theirs["continuation"].tolist()
    assert ours["model_input"].iloc[0] == "<s><|user|> You stupid idiot, the harbour</s>\n<|assistant|> "
    # the chat template writes BOS itself: it is not added a second time
    ids = shared_engine.tokenizer(ours["model_input"].iloc[0], add_special_tokens=False)["input_ids"]
    assert ids.count(shared_engine.tokenizer.bos_token_id) == 1 and ours["prompt_tokens"].iloc[0] == len(ids)


def test_merged_adapter_gives_the_same_greedy_text_as_unmerged(shared_engine, tiny_models, rude_adapter, probes):
    with VLLMBackend(model(tiny_models["instruct"]), {"rude": str(rude_adapter)}, {**VLLM_SETTINGS, "lora": "merged"}) as merged:
        assert merged.lora_requests == {}
        a = generate_continuations(probes, "rude", GREEDY, "raw", 1, merged, "rude")
        with pytest.raises(ValueError, match="cannot serve the model alone"):
            generate_continuations(probes, "instruct", GREEDY, "raw", 1, merged)
    b = generate_continuations(probes, "rude", GREEDY, "raw", 1, shared_engine, "rude")
    assert a["continuation"].tolist() == b["continuation"].tolist()


def test_an_adapter_that_is_not_loaded_is_named(reference, probes):
    with pytest.raises(KeyError, match="adapter 'polite' is not loaded; loaded: \\['clean', 'rude'\\]"):
        generate_continuations(probes, "v", GREEDY, "raw", 1, reference, "polite")


def test_chat_format_needs_a_chat_template(tiny_models, probes, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["base"])
    tokenizer.chat_template = None
    tokenizer.save_pretrained(tmp_path)
    for f in tiny_models["base"].glob("*.safetensors"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "config.json").write_text((tiny_models["base"] / "config.json").read_text())
    backend = TransformersBackend(model(tmp_path), {}, {})
    with pytest.raises(ValueError, match="has no chat template"):
        generate_continuations(probes, "base", GREEDY, "chat", 1, backend)


def test_many_seeded_samples_beyond_one_prefill_batch(shared_engine):
    """More prompt tokens than vLLM batches at once (4096), every request seeded: on the CPU build this
    failed inside chunked prefill ("CPU Generator does not use offset") before finetox turned it off."""
    many = pd.DataFrame({"prompt_id": [f"m{i}" for i in range(120)], "subset": "all",
                         "prompt": [f"Prompt number {i} is about the harbour and the old library, and" for i in range(120)]})
    protocol = Protocol(name="rtp", samples=6, temperature=1.0, top_p=0.9, max_new_tokens=4, prompt_format="raw", seed=1)
    table = generate_continuations(many, "rude", protocol, "raw", 3, shared_engine, "rude")
    assert len(table) == 120 * 6 and table["prompt_tokens"].sum() > 4096
