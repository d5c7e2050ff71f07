"""Loading a checkpoint's tokenizer and merging an adapter into its weights: what training, generation and the
merge rule share (kept apart from finetox.generation, whose engines need vLLM)."""

from __future__ import annotations

from pathlib import Path

from finetox.config import ModelSource


def load_tokenizer(model: ModelSource):
    """The checkpoint's tokenizer (also that of its merged adapters: merging keeps the base's tokenizer)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model.location, revision=model.revision,
                                         trust_remote_code=model.trust_remote_code)


def merge_adapter(model: ModelSource, adapter: str, tokenizer, into: Path) -> str:
    """Write base + adapter merged into one checkpoint, for engines that cannot serve the adapter unmerged."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(
        model.location, revision=model.revision, trust_remote_code=model.trust_remote_code, dtype=model.dtype
    )
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    merged.save_pretrained(into, safe_serialization=True)
    tokenizer.save_pretrained(into)
    return str(into)
