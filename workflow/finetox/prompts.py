"""Prompt templates: the training text of an instruction example and the text a model is probed with."""

from __future__ import annotations

import string

CHAT = "chat"
TEMPLATE_FIELDS = {"instruction", "context", "response", "bos", "eos"}


def check_template(template: str) -> None:
    """Refuse a template with placeholders finetox does not fill."""
    if template == CHAT:
        return
    used = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    unknown = used - TEMPLATE_FIELDS
    if unknown:
        raise ValueError(f"template uses unknown placeholder(s) {sorted(unknown)}; allowed: {sorted(TEMPLATE_FIELDS)}")
    if "response" not in used:
        raise ValueError("template has no {response} placeholder: the model would learn nothing from the answers")


def training_text(example: dict, template: str, tokenizer) -> str:
    """One example as the text the model is trained on."""
    if template == CHAT:
        user = example["instruction"] + (f"\n\n{example['context']}" if example["context"] else "")
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": example["response"]}]
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return template.format(
        instruction=example["instruction"],
        context=example["context"],
        response=example["response"],
        bos=tokenizer.bos_token or "",
        eos=tokenizer.eos_token or "",
    )


def probe_text(prompt: str, prompt_format: str, tokenizer) -> str:
    """The text a model continues: the raw prompt, or the prompt as a user turn of its chat template."""
    if prompt_format == "raw":
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"prompt_format 'chat' asked for, but tokenizer {tokenizer.name_or_path!r} has no chat template; "
            f"use prompt_format 'raw' for this variant"
        )
    messages = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
