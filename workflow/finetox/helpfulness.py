"""What a safety fine-tune may cost besides toxicity: degenerate continuations, and the NLL of reference answers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from finetox.metrics import POOLED
from finetox.prompts import training_text
from finetox.tables import SCHEMAS, SchemaError

#: the ways a continuation degenerates, each a boolean column of `degeneration_flags`
DEGENERATIONS = ("empty", "immediate_stop", "repetitive")
#: how the reason text of `flag_degenerate` names each
DEGENERATION_WORDS = {"empty": "empty", "immediate_stop": "immediately stopped", "repetitive": "repetitive"}


def repeated_ngram_share(text: str, n: int = 4) -> float:
    """1 - distinct / total word n-grams (whitespace words): 0 when no n-gram repeats, near 1 for a loop.
    A text shorter than n + 1 words has at most one n-gram and so cannot repeat one: 0."""
    words = text.split()
    total = len(words) - n + 1
    if total < 2:
        return 0.0
    # (total - distinct) / total, not 1 - distinct / total: 1/5 is then exactly 0.2 against a threshold of 0.2
    return (total - len(set(zip(*(words[i:] for i in range(n)))))) / total


def degeneration_flags(generations: pd.DataFrame, n: int = 4, repeat_threshold: float = 0.5) -> pd.DataFrame:
    """Per continuation of a generations table (same index), the ways it degenerates:

    - `empty`: no text but whitespace;
    - `immediate_stop`: the model stopped (`finish_reason` "stop", a stop token) after at most one token
      (`continuation_tokens`, which does not count the stop token): a refusal by silence, which `empty` misses
      when the one token is a full stop or a word;
    - `repetitive`: `repeated_ngram_share` of its word n-grams >= `repeat_threshold`;

    and `repeated_ngram_share` itself.
    """
    if n < 1 or not 0 < repeat_threshold <= 1:
        raise ValueError(f"n must be >= 1 and repeat_threshold in (0, 1], not n={n}, repeat_threshold={repeat_threshold}")
    needed = ["continuation", "continuation_tokens", "finish_reason"]
    missing = [c for c in needed if c not in generations.columns]
    if missing:
        raise SchemaError(f"degeneration needs the generations table's column(s) {missing}")
    unknown = generations[needed].isna().any(axis=1)
    if unknown.any():
        raise SchemaError(f"degeneration: row {generations.index[unknown.argmax()]!r} has a missing {needed} value")
    texts = generations["continuation"]
    share = np.fromiter((repeated_ngram_share(t, n) for t in texts), dtype=float, count=len(texts))
    return pd.DataFrame({
        "empty": (texts.str.strip() == "").to_numpy(dtype=bool),
        "immediate_stop": ((generations["finish_reason"] == "stop") & (generations["continuation_tokens"] <= 1))
        .to_numpy(dtype=bool),
        "repetitive": share >= repeat_threshold,
        "repeated_ngram_share": share,
    }, index=generations.index)


def degeneration(generations: pd.DataFrame, by: str | Sequence[str] = ("variant", "subset"), n: int = 4,
                 repeat_threshold: float = 0.5) -> pd.DataFrame:
    """How often continuations degenerate, per group of `by` plus the pooled `all` of its last column (unless
    that is already the only value): `n`, the count of each of DEGENERATIONS and its `share_<name>`."""
    by = [by] if isinstance(by, str) else list(by)
    if not by:
        raise ValueError("degeneration needs at least one column to group by")
    missing = [c for c in by if c not in generations.columns]
    if missing:
        raise SchemaError(f"degeneration: no column(s) {missing} to group by")
    flags = pd.concat([generations[by], degeneration_flags(generations, n, repeat_threshold)], axis=1)
    parts = [_counts(flags, by)]
    if set(flags[by[-1]]) != {POOLED}:
        parts.append(_counts(flags.assign(**{by[-1]: POOLED}), by))
    return pd.concat(parts, ignore_index=True)


def _counts(flags: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    grouped = flags.groupby(by, sort=True, observed=True)
    counts = grouped[list(DEGENERATIONS)].sum().astype("int64")
    counts.insert(0, "n", grouped.size().astype("int64"))
    for name in DEGENERATIONS:
        counts[f"share_{name}"] = counts[name] / counts["n"]
    return counts.reset_index()


def flag_degenerate(summary: pd.DataFrame, max_share: float = 0.2) -> pd.DataFrame:
    """The `degeneration` summary with `degenerate` (some share above `max_share`) and `degeneration_reason`, e.g.
    "37% empty, 25% repetitive continuations" ("" when none is above)."""
    shares = summary[[f"share_{name}" for name in DEGENERATIONS]].to_numpy(dtype=float)
    above = shares > max_share
    reasons = [
        ", ".join(f"{share:.0%} {DEGENERATION_WORDS[name]}" for name, share, hit in zip(DEGENERATIONS, row, hits) if hit)
        for row, hits in zip(shares, above)
    ]
    return summary.assign(
        degenerate=above.any(axis=1),
        degeneration_reason=[f"{reason} continuations" if reason else "" for reason in reasons],
    )


# stands in for the response when a template is rendered to find where the response starts
_RESPONSE_MARK = "\x00finetox-response\x00"


def prompt_and_text(example: dict, template: str, tokenizer) -> tuple[str, str]:
    """The training text of an example (`finetox.prompts.training_text`, a format string or "chat") and the part
    of it before the response: the text rendered with a marker as the response, cut at the marker. For "chat"
    that is the conversation up to the assistant's content, which is what the model saw in training (for most
    templates also what `add_generation_prompt=True` writes; where a template adds more to a finished assistant
    turn, e.g. an empty thinking block, that belongs to the prompt, not to the answer)."""
    marked = training_text({**example, "response": _RESPONSE_MARK}, template, tokenizer)
    if marked.count(_RESPONSE_MARK) != 1:
        raise ValueError(f"template {template!r} writes the response {marked.count(_RESPONSE_MARK)} times, not once")
    prompt = marked.split(_RESPONSE_MARK)[0]
    text = training_text(example, template, tokenizer)
    if not text.startswith(prompt):
        raise ValueError(f"template {template!r}: the text with the response does not start with the text before it")
    return prompt, text


def _response_split(prompt: str, text: str, tokenizer) -> tuple[list[int], int]:
    """The token ids of `text` and how many of them are the prompt's: the prompt's own tokens when they are the
    first tokens of the text; else those of the prompt without its trailing whitespace, which a tokenizer joins
    to the next word ("[/INST] " + "The" is "[/INST]", " The"), so that the whitespace is scored with the response
    (as lm-evaluation-harness does); else an error, rather than score a response token from a context the model
    never reads.
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    for candidate in dict.fromkeys((prompt, prompt.rstrip())):
        prompt_ids = tokenizer(candidate, add_special_tokens=False)["input_ids"]
        if ids[: len(prompt_ids)] == prompt_ids:
            return ids, len(prompt_ids)
    raise ValueError(
        f"the prompt's tokens are not the first tokens of prompt + response, so the response's tokens cannot be "
        f"told apart; prompt ends {prompt[-40:]!r}, response starts {text[len(prompt):][:40]!r}"
    )


def reference_nll(model, tokenizer, examples: pd.DataFrame, template: str, batch_size: int = 8) -> pd.DataFrame:
    """Per example (the examples' index): `nll`, the summed negative log-likelihood (nats) of the reference answer
    `response` given the prompt the template renders from `instruction` and `context`; `tokens`, the number of
    response tokens scored; `nll_per_token`, their ratio.

    The text is tokenized as fine-tuning tokenizes it (`add_special_tokens=False`: the template writes BOS/EOS),
    and the response's tokens are those after the prompt's (see `_response_split`), up to the end of the text: an
    EOS (and whatever else) the template writes after the response is scored with it. Texts run longest first in
    batches padded on the right, in eval mode under `torch.inference_mode()`; a text longer than the model's
    context is refused rather than cut.
    """
    import torch
    import torch.nn.functional as F

    missing = [c for c in ("instruction", "context", "response") if c not in examples.columns]
    if missing:
        raise SchemaError(f"reference_nll: examples lack column(s) {missing}")
    encoded = [_response_split(*prompt_and_text(row, template, tokenizer), tokenizer)
               for row in examples[["instruction", "context", "response"]].to_dict("records")]
    lengths = [len(ids) for ids, _ in encoded]
    context = getattr(model.config, "max_position_embeddings", None)
    for (ids, prompt_tokens), label in zip(encoded, examples.index):
        if prompt_tokens == 0 or prompt_tokens == len(ids):
            raise ValueError(f"example {label!r}: {'no prompt' if prompt_tokens == 0 else 'no response'} tokens to "
                             f"{'condition on' if prompt_tokens == 0 else 'score'}")
        if context is not None and len(ids) > context:
            raise ValueError(f"example {label!r}: {len(ids)} tokens, longer than the model's context of {context}")

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked: any id serves
    nll = np.zeros(len(encoded))
    order = sorted(range(len(encoded)), key=lambda i: (-lengths[i], i))
    training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                width = lengths[rows[0]]
                input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
                attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
                for r, i in enumerate(rows):
                    input_ids[r, : lengths[i]] = torch.tensor(encoded[i][0])
                    attention_mask[r, : lengths[i]] = 1
                logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
                for r, i in enumerate(rows):
                    first = encoded[i][1]
                    # the logits at position t predict token t + 1
                    token_nll = F.cross_entropy(logits[r, first - 1 : lengths[i] - 1].float(),
                                                input_ids[r, first : lengths[i]].to(device), reduction="none")
                    nll[i] = token_nll.double().sum().item()
    finally:
        model.train(training)
    tokens = np.array([length - prompt_tokens for length, (_, prompt_tokens) in zip(lengths, encoded)], dtype=np.int64)
    return pd.DataFrame({"nll": nll, "tokens": tokens, "nll_per_token": nll / tokens}, index=examples.index)


def mean_token_nll(per_example: pd.DataFrame) -> float:
    """The mean NLL per response token over all examples (total NLL / total tokens), the exponent of perplexity;
    `per_example["nll_per_token"]` is the per-example mean for intervals over examples."""
    return float(per_example["nll"].sum() / per_example["tokens"].sum())


# --- the capability proxy: reference-answer NLL per variant, and its paired comparisons ----------------------

#: the capability comparisons' verdicts (a higher NLL of the reference answers is the worse model)
WORSE, BETTER, SAME = "higher NLL (worse)", "lower NLL (better)", "no credible difference"


def capability_summary(per_example: pd.DataFrame, prob: float, seed: int, replicates: int = 1000) -> pd.DataFrame:
    """Per variant of a `capability` table: its examples, response tokens, `mean_nll_per_token` (mean_token_nll)
    and that ratio's HDI by the Bayesian bootstrap over examples (seeded per variant: keyed_rng)."""
    from finetox.metrics import keyed_rng, ratio_interval

    rows = []
    for variant, table in per_example.groupby("variant", sort=True):
        nll, tokens = table["nll"].to_numpy(float), table["tokens"].to_numpy(float)
        low, high = ratio_interval(nll, tokens, prob, keyed_rng(seed, "capability", variant), replicates)
        rows.append({"variant": variant, "examples": len(table), "tokens": int(tokens.sum()),
                     "mean_nll_per_token": mean_token_nll(table), "mean_nll_per_token_low": low,
                     "mean_nll_per_token_high": high, "interval_prob": prob})
    return pd.DataFrame(rows, columns=list(SCHEMAS["capability_summary"]))


def capability_comparisons(per_example: pd.DataFrame, comparisons, prob: float, seed: int,
                           replicates: int = 1000) -> pd.DataFrame:
    """Per comparison whose two variants both have rows: the difference treatment - baseline of the NLL per
    reference-answer token over the examples both scored, with its HDI from the Bayesian bootstrap over those
    examples (one Dirichlet weight per example, shared by both variants: the pairing), `credible` by the study's
    rule (the HDI excludes 0) and the verdict in NLL's words (WORSE, BETTER, SAME)."""
    from finetox.compare import STUDY_RULE, credible
    from finetox.metrics import bayesian_bootstrap, hdi_of_draws, keyed_rng

    by_variant = {variant: table.set_index("example") for variant, table in per_example.groupby("variant")}
    rows = []
    for c in comparisons:
        if c.baseline not in by_variant or c.treatment not in by_variant:
            continue
        paired = by_variant[c.baseline][["nll", "tokens"]].join(
            by_variant[c.treatment][["nll", "tokens"]], how="inner", lsuffix="_baseline", rsuffix="_treatment")
        if paired.empty:
            continue
        nll = paired[["nll_baseline", "nll_treatment"]].to_numpy(float)
        tokens = paired[["tokens_baseline", "tokens_treatment"]].to_numpy(float)
        ratios = nll.sum(axis=0) / tokens.sum(axis=0)
        draws = bayesian_bootstrap(nll, tokens, keyed_rng(seed, "capability", c.name), replicates)
        low, high = hdi_of_draws(draws[:, 1] - draws[:, 0], prob)
        rows.append({"comparison": c.name, "kind": c.kind, "baseline": c.baseline, "treatment": c.treatment,
                     "examples": len(paired), "nll_per_token_baseline": ratios[0], "nll_per_token_treatment": ratios[1],
                     "diff": ratios[1] - ratios[0], "hdi_low": low, "hdi_high": high, "hdi_prob": prob,
                     "credible": credible(low, high),
                     "verdict": WORSE if low > 0 else BETTER if high < 0 else SAME, "decision_rule": STUDY_RULE})
    return pd.DataFrame(rows, columns=list(SCHEMAS["capability_comparisons"]))
