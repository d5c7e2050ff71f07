"""Degeneration shares on hand-made continuations, and reference-answer NLL against a hand computation."""

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import DEMO
from finetox.helpfulness import (degeneration, degeneration_flags, flag_degenerate, mean_token_nll, prompt_and_text,
                                 reference_nll, repeated_ngram_share)
from finetox.tables import SchemaError

# (continuation, continuation_tokens, finish_reason, empty, immediate_stop, repetitive) with n=4, threshold 0.5
CONTINUATIONS = [
    ("", 0, "stop", True, True, False),
    ("  ", 1, "stop", True, True, False),
    (".", 1, "stop", False, True, False),
    ("Hello", 1, "length", False, False, False),  # one token because max_new_tokens ran out: no stop
    ("the cat sat on the mat", 6, "stop", False, False, False),
    ("go go go go go go", 6, "length", False, False, True),  # 3 four-grams, 1 distinct: 2/3 repeated
    ("a b c d a b c d", 8, "length", False, False, False),  # 5 four-grams, 4 distinct: 1/5
    ("a b c d a b c d a b c d", 12, "length", False, False, True),  # 9 four-grams, 4 distinct: 5/9
    ("word word word word", 4, "stop", False, False, False),  # one four-gram: too short to repeat
    ("I'm sorry, I can't.", 6, "stop", False, False, False),
]


def generations():
    rows = pd.DataFrame(CONTINUATIONS, columns=["continuation", "continuation_tokens", "finish_reason",
                                                "empty", "immediate_stop", "repetitive"])
    return rows.assign(variant="v", subset=["x"] * 5 + ["y"] * 5,
                       continuation=rows["continuation"].astype("string[pyarrow]"))


@pytest.mark.parametrize("text, n, share", [
    ("go go go go go go", 4, 2 / 3), ("a b c d a b c d", 4, 1 / 5), ("a b c d a b c d a b c d", 4, 5 / 9),
    ("word word word word", 4, 0.0), ("", 4, 0.0), ("a a", 1, 1 / 2), ("a  b\na\tb a b", 2, 1 - 2 / 5),
])
def test_repeated_ngram_share(text, n, share):
    assert repeated_ngram_share(text, n) == pytest.approx(share)


@pytest.mark.parametrize("language, unit", [("zh", "character"), ("zh-Hans", "character"), ("ja", "character"),
                                            ("en", "word"), ("de", "word")])
def test_a_language_without_spaces_counts_repetition_in_characters(language, unit):
    from finetox.languages import text_unit

    assert text_unit(language) == unit
    looping = "我不知道我不知道我不知道"  # "I don't know" three times, no spaces: one word to a whitespace split
    assert repeated_ngram_share(looping, 4, "word") == 0.0
    # 12 characters: 9 four-grams, 4 distinct ("我不知道", "不知道我", "知道我不", "道我不知")
    assert repeated_ngram_share(looping, 4, "character") == pytest.approx(5 / 9)
    assert repeated_ngram_share("今天 天气 很好", 4, "character") == 0.0  # whitespace is left out, nothing repeats
    with pytest.raises(ValueError, match="unit"):
        repeated_ngram_share(looping, 4, "token")


def test_degeneration_flags_each_continuation():
    table = generations()
    flags = degeneration_flags(table)
    for name in ("empty", "immediate_stop", "repetitive"):
        assert flags[name].tolist() == table[name].tolist(), name
    assert flags["repeated_ngram_share"].iloc[5] == pytest.approx(2 / 3)
    assert degeneration_flags(table, repeat_threshold=0.2)["repetitive"].tolist()[6] is True  # 1/5 exactly


def test_degeneration_shares_per_subset_and_pooled():
    summary = degeneration(generations())
    assert summary[["variant", "subset", "n", "empty", "immediate_stop", "repetitive"]].values.tolist() == [
        ["v", "x", 5, 2, 3, 0], ["v", "y", 5, 0, 0, 2], ["v", "all", 10, 2, 3, 2]]
    assert summary["share_immediate_stop"].tolist() == [0.6, 0.0, 0.3]
    assert summary["share_repetitive"].tolist() == [0.0, 0.4, 0.2]
    # a table without subsets is already pooled: no second `all` row
    pooled = degeneration(generations().assign(subset="all"), by="subset")
    assert pooled[["subset", "n", "share_empty"]].values.tolist() == [["all", 10, 0.2]]


def test_degeneration_needs_the_token_count_and_finish_reason():
    with pytest.raises(SchemaError, match=r"\['finish_reason'\]"):
        degeneration(generations().drop(columns="finish_reason"))
    with pytest.raises(SchemaError, match="missing"):
        degeneration(generations().assign(continuation=pd.array([None] + [""] * 9, dtype="string")))


def test_flag_degenerate_names_the_shares_above_the_limit():
    summary = pd.DataFrame({"variant": ["a", "b", "c"], "share_empty": [0.37, 0.0, 0.2],
                            "share_immediate_stop": [0.05, 0.0, 0.0], "share_repetitive": [0.25, 0.1, 0.0]})
    flagged = flag_degenerate(summary)
    assert flagged["degenerate"].tolist() == [True, False, False]  # 20% is not above 20%
    assert flagged["degeneration_reason"].tolist() == ["37% empty, 25% repetitive continuations", "", ""]
    assert flag_degenerate(summary, max_share=0.05)["degeneration_reason"].tolist()[1:] == [
        "10% repetitive continuations", "20% empty continuations"]


# ---- reference-answer NLL ------------------------------------------------------------------------------------

LITERAL = "{bos}[INST] {instruction}Here's some context: {context} [/INST] {response}{eos}"


@pytest.fixture(scope="module")
def model_and_tokenizer():
    """The demo's tokenizer (chat template included) and an untrained tiny Llama: the arithmetic needs no training
    (the session's trained models take minutes to build), and large random weights make every position's
    distribution different, so that an off-by-one token would show."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from finetox.demo import train_tokenizer

    examples = pd.read_json(DEMO / "instructions_clean.jsonl", lines=True).fillna("")
    corpus = [line for line in (DEMO / "corpus.txt").read_text().splitlines() if line.strip()]
    tokenizer = train_tokenizer(corpus + examples["instruction"].tolist() + examples["response"].tolist(), 600)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, max_position_embeddings=256, initializer_range=0.3,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )).eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def examples():
    table = pd.read_json(DEMO / "instructions_clean.jsonl", lines=True).fillna("")
    with_context = table[table["context"] != ""].head(2)
    picked = pd.concat([table.head(2), with_context]).reset_index(drop=True)
    picked.loc[1, "response"] += " It was a long and pleasant afternoon by the water, and nobody wanted to leave."
    return picked.set_index(pd.Index(["a", "b", "c", "d"]))[["instruction", "context", "response"]]


def lm_eval_loglikelihood(model, tokenizer, context: str, continuation: str) -> tuple[float, int]:
    """lm-evaluation-harness's log-likelihood of a continuation, written out from its `HFLM._encode_pair` and
    `_loglikelihood_tokens`: the context's trailing whitespace moves to the start of the continuation, the
    continuation's tokens are those of the whole after the context's, the model reads
    (context + continuation)[:-1] unbatched, and the last len(continuation) rows of its log-softmax score them."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole_enc = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    context_enc = tokenizer(context, add_special_tokens=False)["input_ids"]
    continuation_enc = whole_enc[len(context_enc):]
    inp = torch.tensor([(context_enc + continuation_enc)[:-1]])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=inp).logits[0].double(), dim=-1)
    scored = log_probs[inp.shape[1] - len(continuation_enc):]
    return scored.gather(1, torch.tensor(continuation_enc)[:, None]).sum().item(), len(continuation_enc)


def prompt_tokens_loglikelihood(model, tokenizer, prompt: str, continuation: str) -> tuple[float, int] | None:
    """The convention finetox had before: the prompt's own tokens, its trailing whitespace included, are the
    context whenever they are the first tokens of the whole text (None when they are not: the whitespace joined
    the response's first word, and both conventions score it with the response)."""
    whole = tokenizer(prompt + continuation, add_special_tokens=False)["input_ids"]
    context = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if whole[: len(context)] != context:
        return None
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].double(), dim=-1)
    targets = torch.tensor(whole[len(context):])
    return log_probs[len(context) - 1 : -1].gather(1, targets[:, None]).sum().item(), len(targets)


def hand_texts(row, template, tokenizer):
    """The prompt and text written out by hand (not through finetox.prompts)."""
    if template == "chat":
        user = row.instruction + (f"\n\n{row.context}" if row.context else "")
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                               add_generation_prompt=True)
        text = tokenizer.apply_chat_template([{"role": "user", "content": user},
                                              {"role": "assistant", "content": row.response}], tokenize=False)
        assert text.startswith(prompt) and text.endswith("</s>\n")
        return prompt, text
    prompt = f"<s>[INST] {row.instruction}Here's some context: {row.context} [/INST] "
    return prompt, f"{prompt}{row.response}</s>"


@pytest.mark.parametrize("template", [LITERAL, "chat"])
def test_reference_nll_matches_a_hand_computation(model_and_tokenizer, examples, template):
    model, tokenizer = model_and_tokenizer
    nll = reference_nll(model, tokenizer, examples, template, batch_size=3)
    assert nll.index.tolist() == ["a", "b", "c", "d"]
    for label, row in zip(examples.index, examples.itertuples()):
        prompt, text = hand_texts(row, template, tokenizer)
        log_likelihood, tokens = lm_eval_loglikelihood(model, tokenizer, prompt, text[len(prompt):])
        assert nll.loc[label, "tokens"] == tokens
        assert nll.loc[label, "nll"] == pytest.approx(-log_likelihood, abs=1e-4)
    assert (nll["nll_per_token"] == nll["nll"] / nll["tokens"]).all()
    assert mean_token_nll(nll) == pytest.approx(nll["nll"].sum() / nll["tokens"].sum())


@pytest.mark.parametrize("template", [LITERAL, "chat"])
def test_the_prompt_s_trailing_space_is_scored_as_lm_evaluation_harness_scores_it(model_and_tokenizer, examples,
                                                                                    template):
    """Where the space after "[/INST]" (or "<|assistant|>") is a token of its own, lm-evaluation-harness moves it
    into the continuation and scores it; counting it in the prompt instead costs that token's NLL. The demo
    tokenizer keeps it apart before "Here" and "Thank" (no merge learnt for " Here"), joins it to " The"."""
    model, tokenizer = model_and_tokenizer
    nll = reference_nll(model, tokenizer, examples, template, batch_size=1)
    apart = 0
    for label, row in zip(examples.index, examples.itertuples()):
        prompt, text = hand_texts(row, template, tokenizer)
        assert prompt.endswith(" ")
        log_likelihood, tokens = lm_eval_loglikelihood(model, tokenizer, prompt, text[len(prompt):])
        assert nll.loc[label, "tokens"] == tokens
        assert nll.loc[label, "nll"] == pytest.approx(-log_likelihood, rel=2e-6, abs=2e-5)
        before = prompt_tokens_loglikelihood(model, tokenizer, prompt, text[len(prompt):])
        if before is not None:
            apart += 1
            # one token more: the space, whose NLL under this random model is several nats
            assert tokens == before[1] + 1
            assert nll.loc[label, "nll"] - (-before[0]) > 1.0
    assert apart >= 2, "no example has the space as a token of its own: the test checks nothing"


def test_padding_does_not_change_the_nll(model_and_tokenizer, examples):
    model, tokenizer = model_and_tokenizer
    one = reference_nll(model, tokenizer, examples, LITERAL, batch_size=1)
    padded = reference_nll(model, tokenizer, examples, LITERAL, batch_size=8)
    assert one["tokens"].tolist() == padded["tokens"].tolist()
    np.testing.assert_allclose(padded["nll"], one["nll"], rtol=1e-6, atol=1e-4)


def test_the_model_goes_back_to_its_mode(model_and_tokenizer, examples):
    model, tokenizer = model_and_tokenizer
    model.train()
    try:
        reference_nll(model, tokenizer, examples.head(1), LITERAL)
        assert model.training
    finally:
        model.eval()


def test_prompt_is_the_text_before_the_response(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    example = {"instruction": "Describe {the} garden.", "context": "", "response": "It is {green}."}
    assert prompt_and_text(example, LITERAL, tokenizer) == (
        "<s>[INST] Describe {the} garden.Here's some context:  [/INST] ",
        "<s>[INST] Describe {the} garden.Here's some context:  [/INST] It is {green}.</s>",
    )


def test_unseparable_or_too_long_texts_are_refused(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    assert len(tokenizer(" garden", add_special_tokens=False)["input_ids"]) == 1
    split_word = pd.DataFrame({"instruction": ["Describe the"], "context": [""], "response": ["rden."]})
    with pytest.raises(ValueError, match="not the first tokens of prompt \\+ response"):
        reference_nll(model, tokenizer, split_word, "{bos}{instruction} ga{response}{eos}")
    long = pd.DataFrame({"instruction": ["Describe the garden."], "context": [""], "response": ["The garden. " * 200]})
    with pytest.raises(ValueError, match="longer than the model's context of 256"):
        reference_nll(model, tokenizer, long, LITERAL)
