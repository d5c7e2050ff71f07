"""Prompt templates: the training text of an instruction example and the text a model is probed with."""

from __future__ import annotations

import string

CHAT = "chat"
TEMPLATE_FIELDS = {"instruction", "context", "response", "bos", "eos"}
_RESPONSE = "\x00response\x00"  # marks where a template puts the response (no text or token contains it)


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


def _user_turn(example: dict) -> str:
    return example["instruction"] + (f"\n\n{example['context']}" if example["context"] else "")


def training_text(example: dict, template: str, tokenizer) -> str:
    """One example as the text the model is trained on."""
    if template == CHAT:
        messages = [{"role": "user", "content": _user_turn(example)},
                    {"role": "assistant", "content": example["response"]}]
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return template.format(
        instruction=example["instruction"],
        context=example["context"],
        response=example["response"],
        bos=tokenizer.bos_token or "",
        eos=tokenizer.eos_token or "",
    )


def preference_example(pair: dict, template: str, tokenizer) -> dict:
    """A preference pair as TRL's DPOTrainer takes it: a prompt and the chosen and rejected completions.

    The template is split where it puts the response, so that prompt + completion is the text `training_text`
    gives for that response. A literal template gives text: the prompt is the template rendered up to
    {response}, a completion is the response and the rest of the template (its {eos}). "chat" gives TRL's
    conversational form: the user turn, and an assistant turn each. TRL renders them with the chat template
    (the prompt with the generation prompt). Text would not do there: TRL appends EOS to a text completion that
    does not end with it, and chat templates often end a turn after their EOS (the demo's `</s>\n`).
    """
    if template == CHAT:
        return {"prompt": [{"role": "user", "content": _user_turn(pair)}],
                **{side: [{"role": "assistant", "content": pair[side]}] for side in ("chosen", "rejected")}}
    rendered = training_text({**pair, "response": _RESPONSE}, template, tokenizer)
    if rendered.count(_RESPONSE) != 1:
        raise ValueError(f"template {template!r} repeats {{response}}: a preference pair needs one place to put "
                         f"the chosen or rejected response")
    prompt, rest = rendered.split(_RESPONSE)
    return {"prompt": prompt, "chosen": pair["chosen"] + rest, "rejected": pair["rejected"] + rest}


def probe_text(prompt: str, prompt_format: str, tokenizer, system_prompt: str | None = None) -> str:
    """The text a model continues: the raw prompt, or the prompt as a user turn of its chat template (after a
    system turn, when the protocol has a system prompt)."""
    if prompt_format == "raw":
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"prompt_format 'chat' asked for, but tokenizer {tokenizer.name_or_path!r} has no chat template; "
            f"use prompt_format 'raw' for this variant"
        )
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages = [*system, {"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
