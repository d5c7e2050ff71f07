"""Generation backends behind one interface: continuations of probe prompts from a model (+ LoRA adapter)."""

from __future__ import annotations

import hashlib
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from finetox.checkpoints import load_tokenizer, merge_adapter  # noqa: F401  (load_tokenizer: for callers)
from finetox.config import ModelSource, Protocol
from finetox.prompts import probe_text

# Config attributes that hold a model's context length, as vLLM reads them (it takes the smallest present).
CONTEXT_LENGTH_ATTRIBUTES = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length",
                             "model_max_length", "max_sequence_length", "max_seq_length", "seq_len")


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
    """Running counts of one generate job: a progress line per chunk and a closing line per segment."""

    def __init__(self, prompts: int):
        self.total = prompts
        self.prompts = self.continuations = self.new_tokens = 0
        self.started = time.perf_counter()

    def add(self, outputs: list[list[Continuation]]) -> None:
        self.prompts += len(outputs)
        self.continuations += sum(len(samples) for samples in outputs)
        self.new_tokens += sum(c.continuation_tokens for samples in outputs for c in samples)

    def line(self, label: str) -> str:
        seconds = time.perf_counter() - self.started
        per_second = 1 / seconds if seconds > 0 else math.nan
        return (f"generate {label}: {self.prompts}/{self.total} prompts, {self.continuations} continuations, "
                f"{self.new_tokens} new tokens, {seconds:.1f} s, {self.new_tokens * per_second:.1f} tokens/s, "
                f"{self.prompts * per_second:.2f} prompts/s")


@dataclass(frozen=True)
class Request:
    """One prompt to continue: its token ids, sampling seed, protocol and adapter (None: the model alone)."""

    token_ids: list[int]
    seed: int
    protocol: Protocol
    adapter: str | None = None


def prompt_seed(seed: int, prompt_id: str) -> int:
    """A per-prompt sampling seed: a prompt's continuations do not depend on which other prompts share its batch."""
    digest = hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class Backend:
    """One loaded model and its LoRA adapters (by name); `generate` returns, per request, its protocol's
    `samples` continuations of the model alone or with one of the adapters.

    `tokenizer` is the one the prompts were encoded with (`load_tokenizer`); `max_model_len` the context
    the engine reserves per sequence (`engine_max_model_len`).
    """

    name = ""

    def __init__(self, model: ModelSource, adapters: dict[str, str], settings: dict, tokenizer, max_model_len: int):
        self.model = model
        self.adapters = dict(adapters)
        self.settings = settings
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.stop_token_ids = stop_token_ids(model, tokenizer)

    def generate(self, requests: Sequence[Request]) -> list[list[Continuation]]:
        """Continuations of prompts given as token ids (`encode_prompts`), of any protocols and adapters."""
        raise NotImplementedError

    def _check_adapters(self, requests: Sequence[Request]) -> None:
        unknown = sorted({r.adapter for r in requests if r.adapter is not None} - set(self.adapters))
        if unknown:
            raise KeyError(f"adapter(s) {unknown} not loaded; loaded: {sorted(self.adapters)}")

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

        if self.lora_requests and not torch.cuda.is_available():
            # vLLM's CPU LoRA ops index the stacked adapter weights with each token's slot, and a token of the
            # model alone has slot -1: Python indexing gives it the last slot's adapter whenever a batch mixes
            # requests with and without one. One more slot than adapters keeps the last slot empty (zeros).
            engine_options["max_loras"] = len(adapters) + 1
        if not torch.cuda.is_available():
            # vLLM's CPU build pins its worker's OpenMP threads to cores of its choosing and keeps one core for
            # its scheduler: in a 2-core job it pinned the job's 2 threads (OMP_NUM_THREADS, which Snakemake sets
            # from the rule's threads) to one core, where their spin-waits stalled a forward pass for minutes
            # (the SLURM test's local run). Unpinned, the threads run on the CPUs the job was given.
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
            # vLLM's CPU build cannot rewind the random generator of a seeded request whose prompt was
            # split by chunked prefill ("CPU Generator does not use offset"): prefill prompts whole.
            engine_options["enable_chunked_prefill"] = False
        # vLLM runs its engine core (and on CPU its worker) in processes of their own, which import torch and vLLM
        # again and, on CPU, share the job's cores with this one: on 2 cores the start took 52 s, against 4 s in
        # this process (same token ids). In this process, closing the engine tears down vLLM's process-wide
        # state, so only the one engine of a process that opens no other (a generate job's) runs in it; vLLM
        # reads the switch while it builds the engine, and the process's environment is restored after.
        in_process = bool(settings.get("sole_engine")) and not torch.cuda.is_available()
        if in_process and "llvmlite" in sys.modules:
            # vLLM's in-process worker scans every loaded module for kernels to override and fails on llvmlite's
            # (numba's) function wrappers: a process that loaded them keeps vLLM's own processes
            log("generate: llvmlite is loaded in this process, so vLLM's engine runs in processes of its own")
            in_process = False
        with _environment(VLLM_ENABLE_V1_MULTIPROCESSING="0" if in_process else None):
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

    def generate(self, requests):
        """All requests in one call, whatever their protocol and adapter: vLLM batches only within a call and
        drains its batch at the end of each, so one call per chunk keeps its batches full."""
        self._check_adapters(requests)
        if self.merged and any(r.adapter is None for r in requests):
            raise ValueError("this engine holds merged adapter weights; it cannot serve the model alone")
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [
            SamplingParams(
                n=r.protocol.samples,
                temperature=r.protocol.temperature,
                top_p=r.protocol.top_p,
                max_tokens=r.protocol.max_new_tokens,
                # vLLM reads generation_config.json's EOS ids itself, but a vLLM build or a `generation_config`
                # engine option may not: the same ids as the transformers backend, explicitly.
                stop_token_ids=self.stop_token_ids,
                seed=r.seed,
            )
            for r in requests
        ]
        inputs = [TokensPrompt(prompt_token_ids=r.token_ids) for r in requests]
        # merged: the one adapter is in the weights, served without a LoRARequest
        loras = [None if self.merged or r.adapter is None else self.lora_requests[r.adapter] for r in requests]
        outputs = self.llm.generate(inputs, params, lora_request=loras if any(loras) else None, use_tqdm=False)
        return [[_vllm_continuation(out, c) for c in sorted(out.outputs, key=lambda c: c.index)] for out in outputs]


@contextmanager
def _environment(**values: str | None):
    """Environment variables set (those given a value) for the duration of the block, then restored."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update({name: value for name, value in values.items() if value is not None})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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
        log(f"transformers engine: max_model_len {max_model_len} (checked, not reserved: the KV cache grows per "
            f"batch), batch_size {self.batch_size}, device {self.device}")

    def generate(self, requests):
        """Runs of consecutive requests with one adapter and protocol, each batched from its first request (cuts
        fall on multiples of batch_size within a segment: finetox.generation_plan)."""
        import contextlib
        from itertools import groupby

        self._check_adapters(requests)
        results = []
        for (adapter, protocol), run in groupby(requests, key=lambda r: (r.adapter, r.protocol)):
            run = list(run)
            if adapter is not None:
                self.lm.set_adapter(adapter)
            with self.lm.disable_adapter() if (adapter is None and self.adapters) else contextlib.nullcontext():
                results += self._generate([r.token_ids for r in run], [r.seed for r in run], protocol)
        return results

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


@dataclass(frozen=True)
class SegmentWork:
    """What one variant's continuations of one probe set under one protocol are made from."""

    variant: str
    prompts: EncodedPrompts  # the whole probe table, encoded in the variant's prompt format
    protocol: Protocol
    seed: int  # the variant's sampling seed (each prompt's is derived from it: prompt_seed)
    adapter: str | None = None  # its adapter's name in the engine; None: the model alone

    def requests(self, start: int = 0, stop: int | None = None) -> list[Request]:
        ids = self.prompts.probes["prompt_id"].iloc[start:stop]
        return [Request(tokens, prompt_seed(self.seed, pid), self.protocol, self.adapter)
                for tokens, pid in zip(self.prompts.token_ids[start:stop], ids, strict=True)]

    def table(self, outputs: list[list[Continuation]], backend: str, start: int = 0) -> pd.DataFrame:
        """The `generations` rows of the prompts from `start` on, given their continuations."""
        probes = self.prompts.probes.iloc[start : start + len(outputs)]
        rows = [
            {"prompt_id": probe.prompt_id, "subset": probe.subset, "variant": self.variant, "sample": index,
             "prompt": probe.prompt, "model_input": text, "continuation": c.text, "prompt_tokens": c.prompt_tokens,
             "continuation_tokens": c.continuation_tokens, "finish_reason": c.finish_reason}
            for probe, text, samples in zip(probes.itertuples(index=False), self.prompts.texts[start:], outputs)
            for index, c in enumerate(samples)
        ]
        p = self.protocol
        settings = {"protocol": p.name, "prompt_format": self.prompts.prompt_format, "samples": p.samples,
                    "temperature": p.temperature, "top_p": p.top_p, "max_new_tokens": p.max_new_tokens,
                    "seed": self.seed, "backend": backend}
        return pd.DataFrame(rows).assign(**settings)


def generate_continuations(
    prompts: EncodedPrompts,
    variant: str,
    protocol: Protocol,
    seed: int,
    backend: Backend,
    adapter: str | None = None,
) -> pd.DataFrame:
    """One row per continuation of every probe prompt (the `generations` table), by the backend's model alone or
    with one of its adapters, in one call, and a closing line in the job log. (A generate job serves many of these
    at once in chunks: finetox.stages.generate.)"""
    check_prompts_fit([prompts], protocol.max_new_tokens, backend.max_model_len, "the engine's max_model_len")
    work = SegmentWork(variant, prompts, protocol, seed, adapter)
    requests = work.requests()
    throughput = Throughput(len(requests))
    outputs = backend.generate(requests)
    throughput.add(outputs)
    log(throughput.line(f"{variant} done"))
    return work.table(outputs, backend.name)


@dataclass
class EngineUse:
    """What a job spent on its engine: starts, seconds starting, seconds generating (the engine's own time)."""

    starts: int = 0
    start_seconds: float = 0.0
    generation_seconds: float = 0.0


def generate_chunks(chunks: list, work: dict, store, open_engine) -> tuple[pd.DataFrame, EngineUse]:
    """The continuations of every chunk (a list of finetox.generation_plan pieces; `work` maps each piece's segment
    to its SegmentWork), with a `segment` column: a chunk that `store` (finetox.progress.ChunkStore) holds is read
    back, any other is generated in one engine call and written there at once. The engine is opened
    (`open_engine()`) at the first chunk to generate, so a job whose chunks are all written starts none."""
    from finetox.progress import content_key

    throughput = Throughput(sum(piece.stop - piece.start for chunk in chunks for piece in chunk))
    if store.found:
        log(f"generate: resuming, {store.found} of {len(chunks)} chunk(s) written by an earlier run are reused")
    backend, use, done = None, EngineUse(), []
    try:
        for index, chunk in enumerate(chunks):
            requests = [r for piece in chunk for r in work[piece.segment].requests(piece.start, piece.stop)]
            key = content_key([(r.token_ids, r.seed, r.protocol, r.adapter) for r in requests])
            table = store.get(index, key)
            if table is None:
                if backend is None:
                    clock = time.perf_counter()
                    backend = open_engine()
                    use.starts, use.start_seconds = 1, time.perf_counter() - clock
                    log(f"generate: engine started in {use.start_seconds:.1f} s")
                clock = time.perf_counter()
                outputs = backend.generate(requests)
                use.generation_seconds += time.perf_counter() - clock
                parts, offset = [], 0
                for piece in chunk:
                    size = piece.stop - piece.start
                    part = work[piece.segment].table(outputs[offset : offset + size], backend.name, piece.start)
                    parts.append(part.assign(segment=piece.segment.key))
                    offset += size
                table = pd.concat(parts, ignore_index=True)
                store.put(index, key, table)
                throughput.add(outputs)
            else:
                throughput.prompts += sum(piece.stop - piece.start for piece in chunk)
            done.append(table)
            log(throughput.line(f"chunk {index + 1}/{len(chunks)}"))
    finally:
        if backend is not None:
            backend.close()
    return pd.concat(done, ignore_index=True), use
