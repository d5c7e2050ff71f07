"""Summed log-likelihoods of the scored tokens of tokenized texts under a causal LM, batched by length, no autograd."""

from __future__ import annotations

import numpy as np

#: what finetox.stereotypes.sentence_loglikelihoods computes, in the stereotype jobs' rerun digest (Study.stereotypes_hash): a change
#: of convention must rescore every variant
LOGLIKELIHOOD_CONVENTION = (
    "lm-evaluation-harness TemplateLM.loglikelihood with context '': the sentence's tokens without special tokens, "
    "conditioned on the prefix token (BOS, else EOS), which is not scored; a sentence whose first token is the "
    "prefix token is conditioned on that token instead (1)")


def summed_logprobs(model, sequences: list[list[int]], first_scored: list[int], batch_size: int = 8,
                    pad_id: int = 0) -> np.ndarray:
    """Per sequence, the sum of log p(token t | tokens before t) over its tokens t from index `first_scored[i]` to
    its end (natural log, float64); the first token is never scored (nothing predicts it), so `first_scored[i]`
    must be at least 1. Sequences run longest first in batches of `batch_size`, padded on the right with `pad_id`
    (masked: any id serves, and padding changes nothing), in eval mode under `torch.inference_mode()`; the model's
    mode is restored after. This is what lm-evaluation-harness's `HFLM._loglikelihood_tokens` sums for a
    (context, continuation) pair whose context is the first `first_scored[i]` tokens."""
    import torch
    import torch.nn.functional as F

    if len(sequences) != len(first_scored):
        raise ValueError(f"{len(sequences)} sequences but {len(first_scored)} first scored positions")
    for i, (ids, first) in enumerate(zip(sequences, first_scored)):
        if not 1 <= first < len(ids):
            raise ValueError(f"sequence {i}: {len(ids)} tokens, the first scored at {first}: nothing to condition "
                             f"on or nothing to score")
    lengths = [len(ids) for ids in sequences]
    device = next(model.parameters()).device
    sums = np.zeros(len(sequences))
    order = sorted(range(len(sequences)), key=lambda i: (-lengths[i], i))
    training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                width = lengths[rows[0]]
                input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
                attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
                for r, i in enumerate(rows):
                    input_ids[r, : lengths[i]] = torch.tensor(sequences[i])
                    attention_mask[r, : lengths[i]] = 1
                logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
                for r, i in enumerate(rows):
                    first = first_scored[i]
                    # the logits at position t predict token t + 1
                    token_nll = F.cross_entropy(logits[r, first - 1 : lengths[i] - 1].float(),
                                                input_ids[r, first : lengths[i]].to(device), reduction="none")
                    sums[i] = -token_nll.double().sum().item()
    finally:
        model.train(training)
    return sums
