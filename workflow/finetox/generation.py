"""Generation backends behind one interface: continuations of probe prompts from a model (+ LoRA adapter)."""

from __future__ import annotations

import hashlib
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from finetox.checkpoints import load_tokenizer, merge_adapter  # noqa: F401  (load_tokenizer: for callers)
from finetox.config import ModelSource, Protocol
from finetox.prompts import probe_text

# Config attributes that hold a model's context length, as vLLM reads them (it takes the smallest present).
CONTEXT_LENGTH_ATTRIBUTES = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length",
                             "model_max_length", "max_sequence_length", "max_seq_length", "seq_len")
# About this many progress lines per variant in the job log (each after one `Backend.generate` call).
PROGRESS_LINES = 10


@dataclass(frozen=True)
class Continuation:
    text: str
    prompt_tokens: int
    token_ids: tuple[int, ...]  # without the stop token, like the text
    finish_reason: str

    @property
    def continuation_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class EncodedPrompts:
    """Probe prompts as a model reads them in one prompt format: the rendered texts and their token ids."""

    probes: pd.DataFrame
    prompt_format: str
    texts: list[str]
    token_ids: list[list[int]]


def encode_prompts(probes: pd.DataFrame, prompt_format: str, tokenizer, system_prompt: str | None = None) -> EncodedPrompts:
    """Render the probe prompts (raw or as a chat turn, after the protocol's system turn if it has one) and
    tokenize them, once per job and format."""
    texts = [probe_text(p, prompt_format, tokenizer, system_prompt) for p in probes["prompt"]]
    # A raw prompt gets the tokenizer's special tokens (BOS); a chat template writes its own.
    token_ids = tokenizer(texts, add_special_tokens=prompt_format == "raw")["input_ids"]
    return EncodedPrompts(probes.reset_index(drop=True), prompt_format, texts, token_ids)


def stop_token_ids(model: ModelSource, tokenizer) -> list[int]:
    """Every id generation stops on: the tokenizer's EOS and the eos_token_id list of generation_config.json
    (Gemma-2-IT ends a turn with <end_of_turn>, Llama-3.1-Instruct with <|eot_id|> or <|eom_id|>)."""
    from transformers import GenerationConfig

    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    try:
        eos = GenerationConfig.from_pretrained(model.location, revision=model.revision).eos_token_id
    except OSError:  # no generation_config.json: the tokenizer's EOS alone
        eos = None
    ids += [eos] if isinstance(eos, int) else list(eos or [])
    return sorted(set(ids))


def model_context_length(model: ModelSource) -> tuple[int, str] | None:
    """The longest sequence the model is built for and the config attribute that says so (None if none does)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model.location, revision=model.revision,
                                        trust_remote_code=model.trust_remote_code).get_text_config()
    lengths = [(value, name) for name in CONTEXT_LENGTH_ATTRIBUTES
               if isinstance(value := getattr(config, name, None), int)]
    return min(lengths, default=None)


def check_prompts_fit(prompts: Sequence[EncodedPrompts], max_new_tokens: int, limit: int, limit_name: str) -> None:
    """Fail, naming the longest prompt, where a prompt and its max_new_tokens exceed `limit`."""
    too_long = {}  # prompt id -> its longest encoding (a prompt may be served raw and as a chat turn)
    for encoded in prompts:
        for prompt_id, ids in zip(encoded.probes["prompt_id"], encoded.token_ids):
            if len(ids) + max_new_tokens > limit:
                too_long[prompt_id] = max(len(ids), too_long.get(prompt_id, 0))
    if too_long:
        prompt_id = max(too_long, key=too_long.get)
        others = f" ({len(too_long) - 1} other prompt(s) do not fit either)" if len(too_long) > 1 else ""
        raise ValueError(
            f"prompt {prompt_id!r} has {too_long[prompt_id]} tokens: with max_new_tokens {max_new_tokens} it needs "
            f"{too_long[prompt_id] + max_new_tokens}, over {limit_name} ({limit}){others}"
        )


def engine_max_model_len(model: ModelSource, prompts: Sequence[EncodedPrompts], max_new_tokens: int) -> int:
    """The context an engine serving these prompts reserves: models.<name>.max_model_len where set, else the
    longest prompt + max_new_tokens. A prompt that does not fit (or exceeds the model's own context) fails
    here, before any engine starts."""
    own = model_context_length(model)
    if own is not None:
        check_prompts_fit(prompts, max_new_tokens, own[0], f"the context length of model {model.name!r} ({own[1]})")
    if model.max_model_len is not None:
        check_prompts_fit(prompts, max_new_tokens, model.max_model_len, f"models.{model.name}.max_model_len")
        return model.max_model_len
    return max((len(ids) for encoded in prompts for ids in encoded.token_ids), default=0) + max_new_tokens


def log(line: str) -> None:
    """One line in the job log (the job's stderr goes there), written at once."""
    print(line, file=sys.stderr, flush=True)


class Throughput:
    """Running counts of one variant's generation: a progress line per `generate` call and a closing line."""

    def __init__(self, variant: str, prompts: int):
        self.variant, self.total = variant, prompts
        self.prompts = self.continuations = self.new_tokens = 0
        self.started = time.perf_counter()

    def add(self, outputs: list[list[Continuation]]) -> None:
        self.prompts += len(outputs)
        self.continuations += sum(len(samples) for samples in outputs)
        self.new_tokens += sum(c.continuation_tokens for samples in outputs for c in samples)

    def line(self, done: bool = False) -> str:
        seconds = time.perf_counter() - self.started
        per_second = 1 / seconds if seconds > 0 else math.nan
        progress = f"{self.variant} done: {self.prompts}" if done else f"{self.variant}: {self.prompts}/{self.total}"
        return (f"generate {progress} prompts, {self.continuations} continuations, {self.new_tokens} new tokens, "
                f"{seconds:.1f} s, {self.new_tokens * per_second:.1f} tokens/s, "
                f"{self.prompts * per_second:.2f} prompts/s")


def prompt_seed(seed: int, prompt_id: str) -> int:
    """A per-prompt sampling seed: a prompt's continuations do not depend on which other prompts share its batch."""
    digest = hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class Backend:
    """One loaded model and its LoRA adapters (by name); `generate` returns, per prompt,
    `protocol.samples` continuations of the model alone or with one of the adapters.

    `tokenizer` is the one the prompts were encoded with (`load_tokenizer`); `max_model_len` the context
    the engine reserves per sequence (`engine_max_model_len`).
    """

    name = ""
    # Prompts per `generate` call (one progress line each): at least `min_chunk`, a multiple of `chunk_multiple`.
    min_chunk = 1
    chunk_multiple = 1

    def __init__(self, model: ModelSource, adapters: dict[str, str], settings: dict, tokenizer, max_model_len: int):
        self.model = model
        self.adapters = dict(adapters)
        self.settings = settings
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.stop_token_ids = stop_token_ids(model, tokenizer)

    def generate(self, prompts: list[list[int]], seeds: list[int], protocol: Protocol,
                 adapter: str | None = None) -> list[list[Continuation]]:
        """Continuations of prompts given as token ids (`encode_prompts`)."""
        raise NotImplementedError

    def chunk_size(self, prompts: int) -> int:
        """Prompts per `generate` call for about PROGRESS_LINES progress lines."""
        size = max(self.min_chunk, math.ceil(prompts / PROGRESS_LINES))
        return math.ceil(size / self.chunk_multiple) * self.chunk_multiple

    def _check_adapter(self, adapter: str | None) -> None:
        if adapter is not None and adapter not in self.adapters:
            raise KeyError(f"adapter {adapter!r} is not loaded; loaded: {sorted(self.adapters)}")

    def close(self) -> None:
        """Release the engine (its worker processes and memory)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class VLLMBackend(Backend):
    """vLLM's offline engine. Adapters are served unmerged, several at once, through LoRARequests;
    with `lora: merged` the one adapter is merged into the weights first."""

    name = "vllm"
    # vLLM batches only within one call and drains its batch at the end of each: calls of 512 prompts or
    # more (a tenth of the variant's) keep its batches full.
    min_chunk = 512

    def __init__(self, model: ModelSource, adapters: dict[str, str], settings: dict, tokenizer, max_model_len: int):
        super().__init__(model, adapters, settings, tokenizer, max_model_len)
        from vllm import LLM

        self._scratch = tempfile.TemporaryDirectory(prefix="finetox-merged-")
        location = model.location
        self.lora_requests = {}
        self.merged = bool(adapters) and settings.get("lora", "unmerged") == "merged"
        engine_options = {}
        if self.merged:
            if len(adapters) != 1:
                raise ValueError(f"lora: merged serves one adapter per engine, got {sorted(adapters)}")
            location = merge_adapter(model, next(iter(adapters.values())), tokenizer, Path(self._scratch.name))
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
            max_model_len=max_model_len,
            enforce_eager=settings.get("enforce_eager", False),
            gpu_memory_utilization=settings.get("gpu_memory_utilization", 0.9),
            tensor_parallel_size=model.tensor_parallel_size or settings.get("tensor_parallel_size", 1),
            seed=settings.get("seed", 0),
            **engine_options,
        )
        vllm_config = self.llm.llm_engine.vllm_config
        cache = vllm_config.cache_config
        kv_tokens = (cache.num_gpu_blocks or 0) * cache.block_size
        log(f"vllm engine: max_model_len {vllm_config.model_config.max_model_len}, KV cache {cache.num_gpu_blocks} "
            f"blocks x {cache.block_size} tokens = {kv_tokens} tokens "
            f"({kv_tokens // vllm_config.model_config.max_model_len} sequences of max_model_len at once)")

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
                # vLLM reads generation_config.json's EOS ids itself, but a vLLM build or a `generation_config`
                # engine option may not: the same ids as the transformers backend, explicitly.
                stop_token_ids=self.stop_token_ids,
                seed=seed,
            )
            for seed in seeds
        ]
        inputs = [TokensPrompt(prompt_token_ids=ids) for ids in prompts]
        lora_request = self.lora_requests.get(adapter) if adapter else None
        outputs = self.llm.generate(inputs, params, lora_request=lora_request, use_tqdm=False)
        return [[_vllm_continuation(out, c) for c in sorted(out.outputs, key=lambda c: c.index)] for out in outputs]


def _vllm_continuation(output, completion) -> Continuation:
    """A vLLM completion as a Continuation. vLLM lists the stop token among the ids (not in the text): dropped,
    as in the transformers backend (finetox asks for no stop strings, so "stop" means a stop token)."""
    token_ids = tuple(completion.token_ids)
    if completion.finish_reason == "stop":
        token_ids = token_ids[:-1]
    return Continuation(completion.text, len(output.prompt_token_ids), token_ids, str(completion.finish_reason))


class TransformersBackend(Backend):
    """Hugging Face `generate` with left padding, in batches; for machines without vLLM."""

    name = "transformers"

    def __init__(self, model: ModelSource, adapters: dict[str, str], settings: dict, tokenizer, max_model_len: int):
        super().__init__(model, adapters, settings, tokenizer, max_model_len)
        import torch
        from transformers import AutoModelForCausalLM

        # Padding never reaches the continuations (masked, then cut at the first stop id): any id will do.
        self.pad_token_id = next(i for i in (tokenizer.pad_token_id, *self.stop_token_ids, 0) if i is not None)
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
        # Whole batches per call, as without progress lines: a prompt's padding (and so its greedy text) stays.
        self.min_chunk = self.chunk_multiple = self.batch_size
        log(f"transformers engine: max_model_len {max_model_len} (checked, not reserved: the KV cache grows per "
            f"batch), batch_size {self.batch_size}, device {self.device}")

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
            batch = self._left_padded(batch_prompts)
            with torch.no_grad():
                output = self.lm.generate(
                    **batch,
                    do_sample=not greedy,
                    temperature=protocol.temperature if not greedy else None,
                    top_p=protocol.top_p if not greedy else None,
                    top_k=0 if not greedy else None,
                    max_new_tokens=protocol.max_new_tokens,
                    num_return_sequences=protocol.samples,
                    eos_token_id=self.stop_token_ids,
                    pad_token_id=self.pad_token_id,
                )
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            prompt_lengths = batch["attention_mask"].sum(dim=1).tolist()
            for i in range(len(batch_prompts)):
                samples = []
                for j in range(protocol.samples):
                    tokens = new_tokens[i * protocol.samples + j].tolist()
                    # Cut at the first stop id, as vLLM stops: what follows it is padding.
                    stop = next((k for k, token in enumerate(tokens) if token in self.stop_token_ids), None)
                    tokens = tokens[:stop]
                    text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                    samples.append(Continuation(text, int(prompt_lengths[i]), tuple(tokens),
                                                "length" if stop is None else "stop"))
                results.append(samples)
        return results

    def _left_padded(self, prompts: list[list[int]]) -> dict:
        """A batch of token-id prompts padded on the left (generation continues from the right edge)."""
        import torch

        width = max(len(ids) for ids in prompts)
        input_ids = [[self.pad_token_id] * (width - len(ids)) + ids for ids in prompts]
        attention_mask = [[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts]
        return {"input_ids": torch.tensor(input_ids, device=self.device),
                "attention_mask": torch.tensor(attention_mask, device=self.device)}


BACKENDS: dict[str, type[Backend]] = {"vllm": VLLMBackend, "transformers": TransformersBackend}


def _adapter_rank(adapter: str) -> int:
    import json

    rank = json.loads((Path(adapter) / "adapter_config.json").read_text())["r"]
    # vLLM accepts only these ranks; take the smallest that holds the adapter.
    return next(r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= rank)


def generate_continuations(
    prompts: EncodedPrompts,
    variant: str,
    protocol: Protocol,
    seed: int,
    backend: Backend,
    adapter: str | None = None,
) -> pd.DataFrame:
    """One row per continuation of every probe prompt (the `generations` table), by the backend's
    model alone or with one of its adapters, with progress lines and a closing line in the job log."""
    check_prompts_fit([prompts], protocol.max_new_tokens, backend.max_model_len, "the engine's max_model_len")
    seeds = [prompt_seed(seed, pid) for pid in prompts.probes["prompt_id"]]
    throughput = Throughput(variant, len(seeds))
    outputs = []
    # About PROGRESS_LINES calls, each followed by a progress line; seeds are per prompt, so how the prompts
    # are split changes no continuation.
    chunk = backend.chunk_size(len(seeds))
    for start in range(0, len(seeds), chunk):
        part = backend.generate(prompts.token_ids[start : start + chunk], seeds[start : start + chunk], protocol,
                                adapter)
        outputs += part
        throughput.add(part)
        if len(outputs) < len(seeds):
            log(throughput.line())
    log(throughput.line(done=True))
    rows = []
    for probe, text, samples in zip(prompts.probes.itertuples(index=False), prompts.texts, outputs, strict=True):
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
        "protocol": protocol.name, "prompt_format": prompts.prompt_format, "samples": protocol.samples,
        "temperature": protocol.temperature, "top_p": protocol.top_p,
        "max_new_tokens": protocol.max_new_tokens, "seed": seed, "backend": backend.name,
    }
    return table.assign(**settings)
