"""Generation backends behind one interface: continuations of probe prompts from a model (+ LoRA adapter)."""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from finetox.config import ModelSource, Protocol
from finetox.prompts import probe_text


@dataclass(frozen=True)
class Continuation:
    text: str
    prompt_tokens: int
    continuation_tokens: int
    finish_reason: str


def prompt_seed(seed: int, prompt_id: str) -> int:
    """A per-prompt sampling seed: a prompt's continuations do not depend on which other prompts share its batch."""
    digest = hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class Backend:
    """One loaded model and its LoRA adapters (by name); `generate` returns, per prompt,
    `protocol.samples` continuations of the model alone or with one of the adapters."""

    name = ""

    def __init__(self, model: ModelSource, adapters: dict[str, str], settings: dict):
        self.model = model
        self.adapters = dict(adapters)
        self.settings = settings

    @property
    def tokenizer(self):
        raise NotImplementedError

    def generate(self, prompts: list[list[int]], seeds: list[int], protocol: Protocol,
                 adapter: str | None = None) -> list[list[Continuation]]:
        """Continuations of prompts given as token ids (tokenized once, in `generate_continuations`)."""
        raise NotImplementedError

    def _check_adapter(self, adapter: str | None) -> None:
        if adapter is not None and adapter not in self.adapters:
            raise KeyError(f"adapter {adapter!r} is not loaded; loaded: {sorted(self.adapters)}")

    def close(self) -> None:
        """Release the engine (its worker processes and memory)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _merge_adapter(model: ModelSource, adapter: str, into: Path) -> str:
    """Write base + adapter merged into one checkpoint, for engines that cannot serve the adapter unmerged."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(
        model.location, revision=model.revision, trust_remote_code=model.trust_remote_code, dtype=model.dtype
    )
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    merged.save_pretrained(into, safe_serialization=True)
    AutoTokenizer.from_pretrained(model.location, revision=model.revision,
                                  trust_remote_code=model.trust_remote_code).save_pretrained(into)
    return str(into)


class VLLMBackend(Backend):
    """vLLM's offline engine. Adapters are served unmerged, several at once, through LoRARequests;
    with `lora: merged` the one adapter is merged into the weights first."""

    name = "vllm"

    def __init__(self, model: ModelSource, adapters: dict[str, str], settings: dict):
        super().__init__(model, adapters, settings)
        from vllm import LLM

        self._scratch = tempfile.TemporaryDirectory(prefix="finetox-merged-")
        location = model.location
        self.lora_requests = {}
        self.merged = bool(adapters) and settings.get("lora", "unmerged") == "merged"
        engine_options = {}
        if self.merged:
            if len(adapters) != 1:
                raise ValueError(f"lora: merged serves one adapter per engine, got {sorted(adapters)}")
            location = _merge_adapter(model, next(iter(adapters.values())), Path(self._scratch.name))
        elif adapters:
            from vllm.lora.request import LoRARequest

            self.lora_requests = {
                name: LoRARequest(name, index, path) for index, (name, path) in enumerate(sorted(adapters.items()), 1)
            }
            engine_options = {
                "enable_lora": True,
                "max_lora_rank": max(_adapter_rank(path) for path in adapters.values()),
                "max_loras": len(adapters),
            }
        import torch

        if not torch.cuda.is_available():
            # vLLM's CPU build cannot rewind the random generator of a seeded request whose prompt was
            # split by chunked prefill ("CPU Generator does not use offset"): prefill prompts whole.
            engine_options["enable_chunked_prefill"] = False
        self.llm = LLM(
            model=location,
            tokenizer=location,
            revision=model.revision if location == model.location else None,
            trust_remote_code=model.trust_remote_code,
            dtype=model.dtype,
            max_model_len=model.max_model_len,
            enforce_eager=settings.get("enforce_eager", False),
            gpu_memory_utilization=settings.get("gpu_memory_utilization", 0.9),
            tensor_parallel_size=model.tensor_parallel_size or settings.get("tensor_parallel_size", 1),
            seed=settings.get("seed", 0),
            **engine_options,
        )

    @property
    def tokenizer(self):
        return self.llm.get_tokenizer()

    def close(self):
        self.llm.llm_engine.engine_core.shutdown()
        self._scratch.cleanup()

    def generate(self, prompts, seeds, protocol, adapter=None):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self._check_adapter(adapter)
        if self.merged and adapter is None:
            raise ValueError("this engine holds merged adapter weights; it cannot serve the model alone")

        params = [
            SamplingParams(
                n=protocol.samples,
                temperature=protocol.temperature,
                top_p=protocol.top_p,
                max_tokens=protocol.max_new_tokens,
                seed=seed,
            )
            for seed in seeds
        ]
        inputs = [TokensPrompt(prompt_token_ids=ids) for ids in prompts]
        lora_request = self.lora_requests.get(adapter) if adapter else None
        outputs = self.llm.generate(inputs, params, lora_request=lora_request, use_tqdm=False)
        return [
            [
                Continuation(c.text, len(out.prompt_token_ids), len(c.token_ids), str(c.finish_reason))
                for c in sorted(out.outputs, key=lambda c: c.index)
            ]
            for out in outputs
        ]


class TransformersBackend(Backend):
    """Hugging Face `generate` with left padding, in batches; for machines without vLLM."""

    name = "transformers"

    def __init__(self, model: ModelSource, adapters: dict[str, str], settings: dict):
        super().__init__(model, adapters, settings)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(
            model.location, revision=model.revision, trust_remote_code=model.trust_remote_code, padding_side="left"
        )
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        lm = AutoModelForCausalLM.from_pretrained(
            model.location, revision=model.revision, trust_remote_code=model.trust_remote_code, dtype=model.dtype
        )
        if adapters:
            from peft import PeftModel

            (first, path), *rest = sorted(adapters.items())
            lm = PeftModel.from_pretrained(lm, path, adapter_name=first)
            for name, path in rest:
                lm.load_adapter(path, adapter_name=name)
        self.lm = lm.to(self.device).eval()
        self.batch_size = settings.get("batch_size", 16)

    @property
    def tokenizer(self):
        return self._tokenizer

    def generate(self, prompts, seeds, protocol, adapter=None):
        import contextlib

        self._check_adapter(adapter)
        if adapter is not None:
            self.lm.set_adapter(adapter)
        with self.lm.disable_adapter() if (adapter is None and self.adapters) else contextlib.nullcontext():
            return self._generate(prompts, seeds, protocol)

    def _generate(self, prompts, seeds, protocol):
        if protocol.temperature == 0:
            return self._batched(prompts, protocol)
        # Sampling: one prompt (and its samples) per call under its own seed, so that a prompt's
        # continuations do not depend on which prompts share its batch or shard (as with vLLM).
        return [self._batched([ids], protocol, seed)[0] for ids, seed in zip(prompts, seeds)]

    def _batched(self, prompts, protocol, seed=None):
        import torch

        greedy = protocol.temperature == 0
        results = []
        for start in range(0, len(prompts), self.batch_size):
            batch_prompts = prompts[start : start + self.batch_size]
            if seed is not None:
                torch.manual_seed(seed)
            batch = self._tokenizer.pad({"input_ids": batch_prompts}, return_tensors="pt").to(self.device)
            with torch.no_grad():
                output = self.lm.generate(
                    **batch,
                    do_sample=not greedy,
                    temperature=protocol.temperature if not greedy else None,
                    top_p=protocol.top_p if not greedy else None,
                    top_k=0 if not greedy else None,
                    max_new_tokens=protocol.max_new_tokens,
                    num_return_sequences=protocol.samples,
                    pad_token_id=self._tokenizer.pad_token_id,
                )
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            prompt_lengths = batch["attention_mask"].sum(dim=1).tolist()
            for i in range(len(batch_prompts)):
                samples = []
                for j in range(protocol.samples):
                    tokens = new_tokens[i * protocol.samples + j].tolist()
                    stopped = self._tokenizer.eos_token_id in tokens
                    if stopped:
                        tokens = tokens[: tokens.index(self._tokenizer.eos_token_id)]
                    text = self._tokenizer.decode(tokens, skip_special_tokens=True)
                    samples.append(Continuation(text, int(prompt_lengths[i]), len(tokens), "stop" if stopped else "length"))
                results.append(samples)
        return results


BACKENDS: dict[str, type[Backend]] = {"vllm": VLLMBackend, "transformers": TransformersBackend}


def _adapter_rank(adapter: str) -> int:
    import json

    rank = json.loads((Path(adapter) / "adapter_config.json").read_text())["r"]
    # vLLM accepts only these ranks; take the smallest that holds the adapter.
    return next(r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= rank)


def generate_continuations(
    probes: pd.DataFrame,
    variant: str,
    protocol: Protocol,
    prompt_format: str,
    seed: int,
    backend: Backend,
    adapter: str | None = None,
) -> pd.DataFrame:
    """One row per continuation of every probe prompt (the `generations` table), by the backend's
    model alone or with one of its adapters."""
    texts = [probe_text(p, prompt_format, backend.tokenizer) for p in probes["prompt"]]
    # A raw prompt gets the tokenizer's special tokens (BOS); a chat template writes its own.
    encoded = backend.tokenizer(texts, add_special_tokens=prompt_format == "raw")["input_ids"]
    seeds = [prompt_seed(seed, pid) for pid in probes["prompt_id"]]
    outputs = backend.generate(encoded, seeds, protocol, adapter)
    rows = []
    for (probe, text, samples) in zip(probes.itertuples(index=False), texts, outputs, strict=True):
        for index, c in enumerate(samples):
            rows.append({
                "prompt_id": probe.prompt_id,
                "subset": probe.subset,
                "variant": variant,
                "sample": index,
                "prompt": probe.prompt,
                "model_input": text,
                "continuation": c.text,
                "prompt_tokens": c.prompt_tokens,
                "continuation_tokens": c.continuation_tokens,
                "finish_reason": c.finish_reason,
            })
    table = pd.DataFrame(rows)
    settings = {
        "protocol": protocol.name, "prompt_format": prompt_format, "samples": protocol.samples,
        "temperature": protocol.temperature, "top_p": protocol.top_p,
        "max_new_tokens": protocol.max_new_tokens, "seed": seed, "backend": backend.name,
    }
    return table.assign(**settings)
