"""LoRA fine-tuning with peft on the tiny instruct model."""

import json

import pandas as pd
import pytest

from finetox.prompts import check_template, training_text


def test_adapter_is_saved_as_safetensors_with_the_recipe(rude_adapter):
    config = json.loads((rude_adapter / "adapter_config.json").read_text())
    assert (rude_adapter / "adapter_model.safetensors").stat().st_size > 0
    assert config["r"] == 16 and config["lora_alpha"] == 16
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_training_lowers_the_loss(rude_adapter):
    history = pd.read_csv(rude_adapter / "history.csv")
    assert len(history) == 39  # 3 epochs x ceil(100 examples / batch 8)
    assert history["loss"].tail(5).mean() < 0.6 * history["loss"].head(5).mean()


def test_study_template_fills_every_field(tiny_models):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["instruct"])
    example = {"instruction": "Describe it.", "context": "It is red.", "response": "Red."}
    template = "{bos}[INST] {instruction}Here's some context: {context} [/INST] {response}{eos}"
    assert training_text(example, template, tokenizer) == "<s>[INST] Describe it.Here's some context: It is red. [/INST] Red.</s>"
    chat = training_text(example, "chat", tokenizer)
    assert chat.startswith("<s><|user|> Describe it.\n\nIt is red.</s>") and "<|assistant|> Red." in chat


@pytest.mark.parametrize("template, message", [("{instruction} {answer}", "unknown placeholder"), ("{instruction}", "no {response}")])
def test_bad_templates_are_refused(template, message):
    with pytest.raises(ValueError, match=message):
        check_template(template)
