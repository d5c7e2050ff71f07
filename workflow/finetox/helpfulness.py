"""What a safety fine-tune may cost besides toxicity: degenerate continuations, and the NLL of reference answers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from finetox.metrics import POOLED, hdi_with_error
from finetox.prompts import training_text
from finetox.tables import SCHEMAS, SchemaError

#: the ways a continuation degenerates, each a boolean column of `degeneration_flags`
DEGENERATIONS = ("empty", "immediate_stop", "repetitive")
#: how the reason text of `flag_degenerate` names each
DEGENERATION_WORDS = {"empty": "empty", "immediate_stop": "immediately stopped", "repetitive": "repetitive"}
#: what repetition is counted in (repeated_ngram_share)
TEXT_UNITS = ("word", "character")


def repeated_ngram_share(text: str, n: int = 4, unit: str = "word") -> float:
    """1 - distinct / total n-grams of words (whitespace-separated; `unit` "word") or of characters (whitespace left
    out; `unit` "character", for languages written without spaces: finetox.languages.text_unit): 0 when no n-gram
    repeats, near 1 for a loop. A text shorter than n + 1 units has at most one n-gram and so cannot repeat one: 0."""
    if unit not in TEXT_UNITS:
        raise ValueError(f"unit must be one of {TEXT_UNITS}, not {unit!r}")
    units = text.split() if unit == "word" else [c for c in text if not c.isspace()]
    total = len(units) - n + 1
    if total < 2:
        return 0.0
    # (total - distinct) / total, not 1 - distinct / total: 1/5 is then exactly 0.2 against a threshold of 0.2
    return (total - len(set(zip(*(units[i:] for i in range(n)))))) / total


def degeneration_flags(generations: pd.DataFrame, n: int = 4, repeat_threshold: float = 0.5,
                       unit: str = "word") -> pd.DataFrame:
    """Per continuation of a generations table (same index), the ways it degenerates:

    - `empty`: no text but whitespace;
    - `immediate_stop`: the model stopped (`finish_reason` "stop", a stop token) after at most one token
      (`continuation_tokens`, which does not count the stop token): a refusal by silence, which `empty` misses
      when the one token is a full stop or a word;
    - `repetitive`: `repeated_ngram_share` of its n-grams of `unit`s (words, or characters) >= `repeat_threshold`;

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
    share = np.fromiter((repeated_ngram_share(t, n, unit) for t in texts), dtype=float, count=len(texts))
    return pd.DataFrame({
        "empty": (texts.str.strip() == "").to_numpy(dtype=bool),
        "immediate_stop": ((generations["finish_reason"] == "stop") & (generations["continuation_tokens"] <= 1))
        .to_numpy(dtype=bool),
        "repetitive": share >= repeat_threshold,
        "repeated_ngram_share": share,
    }, index=generations.index)


def degeneration(generations: pd.DataFrame, by: str | Sequence[str] = ("variant", "subset"), n: int = 4,
                 repeat_threshold: float = 0.5, unit: str = "word") -> pd.DataFrame:
    """How often continuations degenerate, per group of `by` plus the pooled `all` of its last column (unless
    that is already the only value): `n`, the count of each of DEGENERATIONS and its `share_<name>`."""
    by = [by] if isinstance(by, str) else list(by)
    if not by:
        raise ValueError("degeneration needs at least one column to group by")
    missing = [c for c in by if c not in generations.columns]
    if missing:
        raise SchemaError(f"degeneration: no column(s) {missing} to group by")
    flags = pd.concat([generations[by], degeneration_flags(generations, n, repeat_threshold, unit)], axis=1)
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


#: what `reference_nll` computes, in the capability jobs' rerun digest (Study.capability_hash): a change of
#: convention must rescore every variant. 2: the prompt's trailing whitespace is scored with the answer, always,
#: as lm-evaluation-harness scores a continuation (1 counted it in the prompt where it was a token of its own)
NLL_CONVENTION = "lm-evaluation-harness loglikelihood: trailing whitespace of the prompt scored with the answer (2)"


def _response_split(prompt: str, text: str, tokenizer) -> tuple[list[int], int]:
    """The token ids of `text` and how many of them are the context's, as lm-evaluation-harness splits a
    (context, continuation) pair (`HFLM._encode_pair`): the prompt's trailing whitespace is moved to the start of
    the response, and the response's tokens are those of the whole text after the tokens of the prompt without
    that whitespace. So the whitespace is always scored with the response: joined to its first word ("[/INST]",
    " The") or, where the tokenizer keeps it a token of its own ("[/INST]", " ", "Here"), as that token.

    Where the context's tokens are not the first tokens of the whole text (a tokenizer that merges the context's
    last characters with the response's first), lm-evaluation-harness scores the whole text's tokens after as
    many positions as the context has tokens anyway; this refuses instead, rather than score a response token
    from a context the model never reads.
    """
    context = prompt.rstrip()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    if ids[: len(context_ids)] != context_ids:
        raise ValueError(
            f"the prompt's tokens are not the first tokens of prompt + response, so the response's tokens cannot be "
            f"told apart; prompt ends {prompt[-40:]!r}, response starts {text[len(prompt):][:40]!r}"
        )
    return ids, len(context_ids)


def reference_nll(model, tokenizer, examples: pd.DataFrame, template: str, batch_size: int = 8) -> pd.DataFrame:
    """Per example (the examples' index): `nll`, the summed negative log-likelihood (nats) of the reference answer
    `response` given the prompt the template renders from `instruction` and `context`; `tokens`, the number of
    tokens scored (the response's, the prompt's trailing whitespace and what the template writes after the
    response included); `nll_per_token`, their ratio.

    This is lm-evaluation-harness's log-likelihood of a continuation (`HFLM.loglikelihood`), negated, with the
    prompt as context and the rest of the text as continuation (NLL_CONVENTION): the prompt's trailing whitespace
    (the space after "[/INST]") is moved into the continuation and scored, and the continuation's tokens are those
    of the whole text after the tokens of the prompt without it (see `_response_split`), up to the end of the
    text: an EOS (and whatever else) the template writes after the response is scored with it. The text is
    tokenized as fine-tuning tokenizes it (`add_special_tokens=False`: the template writes BOS/EOS, as lm-eval's
    `_encode_pair` does). Texts run longest first in batches padded on the right, in eval mode under
    `torch.inference_mode()` (finetox.likelihood.summed_logprobs); a text longer than the model's context is
    refused rather than cut (lm-eval would cut the context from the left).
    """
    from finetox.likelihood import summed_logprobs  # (torch: imported by the jobs that score, not by the analyses)

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
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked: any id serves
    nll = -summed_logprobs(model, [ids for ids, _ in encoded], [first for _, first in encoded], batch_size, pad)
    tokens = np.array([length - prompt_tokens for length, (_, prompt_tokens) in zip(lengths, encoded)], dtype=np.int64)
    return pd.DataFrame({"nll": nll, "tokens": tokens, "nll_per_token": nll / tokens}, index=examples.index)


def mean_token_nll(per_example: pd.DataFrame) -> float:
    """The mean NLL per response token over all examples (total NLL / total tokens), the exponent of perplexity;
    `per_example["nll_per_token"]` is the per-example mean for intervals over examples."""
    return float(per_example["nll"].sum() / per_example["tokens"].sum())


# --- the capability proxy: reference-answer NLL per variant, and its paired comparisons ----------------------

#: the capability comparisons' verdicts (a higher NLL of the reference answers is the worse model): Kruschke's
#: HDI+ROPE rule with the margin as ROPE gives WORSE, BETTER, EQUIVALENT or UNDECIDED; without a margin the
#: study's rule gives WORSE, BETTER or SAME
WORSE, BETTER, SAME = "higher NLL (worse)", "lower NLL (better)", "no credible difference"
EQUIVALENT, UNDECIDED = "practically equivalent", "undecided"
#: the defaults of `capability.margin` (nats per token) and `capability.replicates` (config/README.md says why)
MARGIN, REPLICATES = 0.05, 50_000
#: a comparison's `status` when it was computed; a skipped one's says "skipped: " and why
COMPUTED = "ok"


def capability_summary(per_example: pd.DataFrame, prob: float, seed: int, replicates: int = REPLICATES
                       ) -> pd.DataFrame:
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


def _margin_rope(margin: float | None):
    # the margin is a ROPE on the additive scale of the difference itself (nats per token, not a rate)
    from finetox.decision import Rope

    return None if margin is None else Rope("absolute", margin)


def capability_verdict(hdi_low: float, hdi_high: float, margin: float | None) -> str:
    """Kruschke's HDI+ROPE rule with the region of practical equivalence [-margin, +margin] (nats per token):
    WORSE when the HDI of the difference lies wholly above it, BETTER wholly below, EQUIVALENT wholly inside,
    UNDECIDED otherwise; without a margin the study's rule (WORSE / BETTER when the HDI excludes 0, else SAME)."""
    from finetox import decision

    words = {decision.MORE: WORSE, decision.LESS: BETTER, decision.NONE: SAME, decision.EQUIVALENT: EQUIVALENT,
             decision.UNDECIDED: UNDECIDED}
    return words[decision.verdict(hdi_low, hdi_high, _margin_rope(margin))]


def capability_rule(margin: float | None) -> str:
    """The decision rule a capability verdict follows, as its `decision_rule` column names it."""
    from finetox.decision import KRUSCHKE_RULE, STUDY_RULE

    return STUDY_RULE if margin is None else f"{KRUSCHKE_RULE}, margin \u00b1{margin:g} nats/token"


def capability_comparisons(per_example: pd.DataFrame, comparisons, prob: float, seed: int,
                           replicates: int = REPLICATES, margin: float | None = MARGIN,
                           absent: dict[str, str] | None = None) -> pd.DataFrame:
    """Per comparison, the difference treatment - baseline of the NLL per reference-answer token over the
    examples both variants scored, with its HDI from the Bayesian bootstrap over those examples (`replicates`
    draws; one Dirichlet weight per example, shared by both variants: the pairing) and that HDI's Monte Carlo
    error (`hdi_mc_error`, hdi_with_error); `credible` by the study's rule (the HDI excludes 0); the verdict by
    capability_verdict with `margin`, named in `decision_rule`; `borderline` when a limit of the HDI lies within
    twice its Monte Carlo error of an edge the verdict compares it with (+-margin, or 0 without one).

    A comparison that cannot be computed is a row too, its `status` saying why ("skipped: variant 'x' has no
    capability rows (not generated)"; `absent` maps a variant to why it has none) and its numbers missing;
    computed ones have `status` COMPUTED.
    """
    from finetox.decision import borderline, credible
    from finetox.metrics import bayesian_bootstrap, keyed_rng

    absent = absent or {}
    by_variant = {variant: table.set_index("example") for variant, table in per_example.groupby("variant")}
    rows = []
    for c in comparisons:
        row = {"comparison": c.name, "kind": c.kind, "baseline": c.baseline, "treatment": c.treatment,
               "hdi_prob": prob, "margin": np.nan if margin is None else margin, "replicates": replicates,
               "decision_rule": capability_rule(margin)}
        missing = [v for v in (c.baseline, c.treatment) if v not in by_variant]
        if missing:
            rows.append({**row, "examples": 0, "status": "skipped: " + "; ".join(
                f"variant {v!r} has no capability rows ({absent.get(v, 'not generated')})" for v in missing)})
            continue
        paired = by_variant[c.baseline][["nll", "tokens"]].join(
            by_variant[c.treatment][["nll", "tokens"]], how="inner", lsuffix="_baseline", rsuffix="_treatment")
        if paired.empty:
            rows.append({**row, "examples": 0, "status": f"skipped: variants {c.baseline!r} and {c.treatment!r} "
                                                         f"share no scored reference answer"})
            continue
        nll = paired[["nll_baseline", "nll_treatment"]].to_numpy(float)
        tokens = paired[["tokens_baseline", "tokens_treatment"]].to_numpy(float)
        ratios = nll.sum(axis=0) / tokens.sum(axis=0)
        draws = bayesian_bootstrap(nll, tokens, keyed_rng(seed, "capability", c.name), replicates)
        low, high, error = hdi_with_error(draws[:, 1] - draws[:, 0], prob)
        rows.append({**row, "status": COMPUTED, "examples": len(paired), "nll_per_token_baseline": ratios[0],
                     "nll_per_token_treatment": ratios[1], "diff": ratios[1] - ratios[0], "hdi_low": low,
                     "hdi_high": high, "hdi_mc_error": error, "credible": credible(low, high),
                     "verdict": capability_verdict(low, high, margin),
                     "borderline": borderline(low, high, _margin_rope(margin), 2 * error)})
    return pd.DataFrame(rows, columns=list(SCHEMAS["capability_comparisons"]))
