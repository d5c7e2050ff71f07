"""Generation backends on the tiny models: vLLM (CPU build) and transformers, base and LoRA, raw and chat."""

import json
import re
import shutil

import pandas as pd
import pytest

from conftest import REPO
from finetox import generation, stages, tables
from finetox.config import ModelSource, Protocol, load
from finetox.generation import (
    Request,
    SegmentWork,
    TransformersBackend,
    VLLMBackend,
    encode_prompts,
    engine_max_model_len,
    generate_continuations,
    load_tokenizer,
)
from finetox.tables import conform

GREEDY = Protocol(name="study", samples=1, temperature=0.0, top_p=1.0, max_new_tokens=12, prompt_format="raw", seed=1)
SAMPLED = Protocol(name="rtp", samples=3, temperature=1.0, top_p=0.9, max_new_tokens=8, prompt_format="raw", seed=1)
VLLM_SETTINGS = {"enforce_eager": True, "seed": 0, "gpu_memory_utilization": 0.2}


def model(path, max_model_len=None):
    return ModelSource(name="m", path=str(path), hub=None, revision=None, trust_remote_code=False,
                       dtype="float32", max_model_len=max_model_len)


def continuations_of(probes, variant, protocol, prompt_format, seed, backend, adapter=None):
    """generate_continuations of probe prompts encoded with the backend's tokenizer."""
    prompts = encode_prompts(probes, prompt_format, backend.tokenizer)
    return generate_continuations(prompts, variant, protocol, seed, backend, adapter)


def closing_line(log: str, variant: str) -> tuple[int, int, int]:
    """Prompts, continuations and new tokens of a variant's closing line in a job log."""
    found = re.findall(rf"^generate {variant} done: (\d+)/\d+ prompts, (\d+) continuations, (\d+) new tokens, "
                       rf"[\d.]+ s, [\d.]+ tokens/s, [\d.]+ prompts/s$", log, re.M)
    assert len(found) == 1, log
    return tuple(map(int, found[0]))


@pytest.fixture(scope="module")
def probes():
    rows = [("p1", "toxic", "You stupid idiot, the harbour"), ("p2", "nontoxic", "The weather at the harbour today"),
            ("p3", "nontoxic", "Yesterday at the chess club we")]
    return pd.DataFrame(rows, columns=["prompt_id", "subset", "prompt"])


@pytest.fixture(scope="module")
def many():
    """More prompt tokens than vLLM batches at once (4096) once sampled 6 times."""
    return pd.DataFrame({"prompt_id": [f"m{i}" for i in range(120)], "subset": "all",
                         "prompt": [f"Prompt number {i} is about the harbour and the old library, and" for i in range(120)]})


@pytest.fixture(scope="module")
def adapters(rude_adapter, clean_adapter):
    return {"rude": str(rude_adapter), "clean": str(clean_adapter)}


@pytest.fixture(scope="module")
def tokenizer(tiny_models):
    return load_tokenizer(model(tiny_models["instruct"]))


@pytest.fixture(scope="module")
def served(probes, many, tokenizer):
    """Every prompt this module's engines serve, encoded as they get it: their max_model_len derives from these."""
    return [encode_prompts(probes, "raw", tokenizer), encode_prompts(probes, "chat", tokenizer),
            encode_prompts(many, "raw", tokenizer)]


@pytest.fixture(scope="module")
def max_model_len(tiny_models, served):
    # GREEDY asks for the most new tokens among this module's protocols
    return engine_max_model_len(model(tiny_models["instruct"]), served, GREEDY.max_new_tokens)


@pytest.fixture(scope="module")
def shared_engine(tiny_models, adapters, tokenizer, max_model_len):
    """One vLLM engine serving the instruct model alone and with either adapter."""
    with VLLMBackend(model(tiny_models["instruct"]), adapters, VLLM_SETTINGS, tokenizer, max_model_len) as engine:
        yield engine


@pytest.fixture(scope="module")
def reference(tiny_models, adapters, tokenizer, max_model_len):
    return TransformersBackend(model(tiny_models["instruct"]), adapters, {}, tokenizer, max_model_len)


@pytest.mark.parametrize("adapter", [None, "rude", "clean"])
def test_one_vllm_engine_serves_the_model_and_each_adapter_like_transformers(shared_engine, reference, probes, adapter):
    """Greedy continuations: vLLM + LoRARequest == transformers + peft, for the model alone and each adapter."""
    assert set(shared_engine.lora_requests) == {"rude", "clean"}
    served = continuations_of(probes, "v", GREEDY, "raw", 1, shared_engine, adapter=adapter)
    expected = continuations_of(probes, "v", GREEDY, "raw", 1, reference, adapter=adapter)
    for column in ("continuation", "prompt_tokens", "continuation_tokens", "finish_reason"):
        assert served[column].tolist() == expected[column].tolist()
    assert (served["continuation_tokens"] > 0).all()


def sole_engine_in_a_fresh_process(model_dir, adapters, tokenizer, max_model_len, requests):
    """What a generate job's engine does in its own fresh process: whether it started any process, whether the
    environment holds vLLM's switch once the engine is built, and its continuations of `requests`."""
    import os

    import psutil

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with VLLMBackend(model(model_dir), adapters, {**VLLM_SETTINGS, "sole_engine": True}, tokenizer,
                     max_model_len) as sole:
        started = {p.pid for p in psutil.Process().children(recursive=True)} - before
        return started, "VLLM_ENABLE_V1_MULTIPROCESSING" in os.environ, sole.generate(requests)


def test_a_sole_engine_runs_in_its_process_with_the_continuations_of_one_in_its_own(
        shared_engine, tiny_models, adapters, tokenizer, max_model_len, probes, many):
    """A generate job's engine (`sole_engine`) runs in the job's process on CPU: built in a fresh process, as a
    job's is, it starts no process, leaves the environment as it was, and its greedy and seeded continuations,
    model alone and with each adapter, equal those of an engine in processes of its own (the shared engine)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    requests = [r for adapter in (None, "rude", "clean") for w in (
        SegmentWork("g", encode_prompts(probes, "raw", tokenizer), GREEDY, 1, adapter),
        SegmentWork("s", encode_prompts(many.iloc[:20], "raw", tokenizer), SAMPLED, 5, adapter)) for r in w.requests()]
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as job:
        started, switch_left, outputs = job.submit(sole_engine_in_a_fresh_process, tiny_models["instruct"], adapters,
                                                   tokenizer, max_model_len, requests).result()
    assert not started and not switch_left
    assert outputs == shared_engine.generate(requests)


def test_the_adapters_change_the_continuations(shared_engine, probes):
    texts = {a: continuations_of(probes, "v", GREEDY, "raw", 1, shared_engine, adapter=a)["continuation"].tolist()
             for a in (None, "rude", "clean")}
    assert texts["rude"] != texts[None] and texts["rude"] != texts["clean"]


def test_sampled_generation_is_one_row_per_continuation_and_seeded(shared_engine, probes):
    table = conform(continuations_of(probes, "rude", SAMPLED, "raw", 7, shared_engine, "rude"), "generations", "t")
    assert len(table) == len(probes) * SAMPLED.samples
    assert table.groupby("prompt_id")["sample"].apply(sorted).tolist() == [[0, 1, 2]] * 3
    assert set(table["seed"]) == {7} and set(table["backend"]) == {"vllm"} and set(table["temperature"]) == {1.0}
    again = continuations_of(probes, "rude", SAMPLED, "raw", 7, shared_engine, "rude")
    assert table["continuation"].tolist() == again["continuation"].tolist()
    # a prompt's samples do not depend on the other prompts in the batch (or shard)
    alone = continuations_of(probes.iloc[[2]], "rude", SAMPLED, "raw", 7, shared_engine, "rude")
    assert alone["continuation"].tolist() == table[table["prompt_id"] == "p3"]["continuation"].tolist()


def test_transformers_sampling_is_seeded_per_prompt(reference, probes):
    table = continuations_of(probes, "rude", SAMPLED, "raw", 7, reference, "rude")
    alone = continuations_of(probes.iloc[[2]], "rude", SAMPLED, "raw", 7, reference, "rude")
    assert alone["continuation"].tolist() == table[table["prompt_id"] == "p3"]["continuation"].tolist()
    other_seed = continuations_of(probes, "rude", SAMPLED, "raw", 8, reference, "rude")
    assert other_seed["continuation"].tolist() != table["continuation"].tolist()


def test_chat_format_wraps_the_prompt_in_the_template(shared_engine, reference, probes):
    ours = continuations_of(probes, "instruct", GREEDY, "chat", 1, shared_engine)
    theirs = continuations_of(probes, "instruct", GREEDY, "chat", 1, reference)
    assert ours["continuation"].tolist() == theirs["continuation"].tolist()
    assert ours["model_input"].iloc[0] == "<s><|user|> You stupid idiot, the harbour</s>\n<|assistant|> "
    # the chat template writes BOS itself: it is not added a second time
    ids = shared_engine.tokenizer(ours["model_input"].iloc[0], add_special_tokens=False)["input_ids"]
    assert ids.count(shared_engine.tokenizer.bos_token_id) == 1 and ours["prompt_tokens"].iloc[0] == len(ids)


def test_merged_adapter_gives_the_same_greedy_text_as_unmerged(shared_engine, tiny_models, rude_adapter, probes):
    with VLLMBackend(model(tiny_models["instruct"]), {"rude": str(rude_adapter)}, {**VLLM_SETTINGS, "lora": "merged"},
                     shared_engine.tokenizer, shared_engine.max_model_len) as merged:
        assert merged.lora_requests == {}
        a = continuations_of(probes, "rude", GREEDY, "raw", 1, merged, "rude")
        with pytest.raises(ValueError, match="cannot serve the model alone"):
            continuations_of(probes, "instruct", GREEDY, "raw", 1, merged)
    b = continuations_of(probes, "rude", GREEDY, "raw", 1, shared_engine, "rude")
    assert a["continuation"].tolist() == b["continuation"].tolist()


def test_an_adapter_that_is_not_loaded_is_named(reference, probes):
    with pytest.raises(KeyError, match="adapter\\(s\\) \\['polite'\\] not loaded; loaded: \\['clean', 'rude'\\]"):
        continuations_of(probes, "v", GREEDY, "raw", 1, reference, "polite")


def test_chat_format_needs_a_chat_template(tiny_models, probes):
    tokenizer = load_tokenizer(model(tiny_models["base"]))
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="has no chat template"):
        encode_prompts(probes, "chat", tokenizer)


def test_many_seeded_samples_beyond_one_prefill_batch(shared_engine, many):
    """More prompt tokens than vLLM batches at once (4096), every request seeded: on the CPU build this
    failed inside chunked prefill ("CPU Generator does not use offset") before finetox turned it off."""
    protocol = Protocol(name="rtp", samples=6, temperature=1.0, top_p=0.9, max_new_tokens=4, prompt_format="raw", seed=1)
    table = continuations_of(many, "rude", protocol, "raw", 3, shared_engine, "rude")
    assert len(table) == 120 * 6 and table["prompt_tokens"].sum() > 4096


def test_both_backends_stop_on_every_eos_id_of_the_generation_config(tiny_models, tokenizer, max_model_len, probes,
                                                                      tmp_path):
    """A second EOS id in generation_config.json (like Gemma-2-IT's <end_of_turn> or Llama-3.1's <|eot_id|>)
    ends a continuation at its first occurrence, in both backends alike."""
    prompts = encode_prompts(probes, "raw", tokenizer)

    def greedy(backend_class, path):
        with backend_class(model(path), {}, VLLM_SETTINGS, tokenizer, max_model_len) as backend:
            return [samples[0] for samples in backend.generate([Request(ids, 0, GREEDY) for ids in prompts.token_ids])]

    free = greedy(TransformersBackend, tiny_models["instruct"])
    tokens = free[0].token_ids
    # the latest position at which p1's greedy continuation produces a token for the first time
    k = max(k for k in range(1, len(tokens)) if tokens[k] not in tokens[:k])
    stopping = tmp_path / "stopping"
    shutil.copytree(tiny_models["instruct"], stopping)
    generation_config = json.loads((stopping / "generation_config.json").read_text())
    generation_config["eos_token_id"] = [tokenizer.eos_token_id, tokens[k]]
    (stopping / "generation_config.json").write_text(json.dumps(generation_config))

    stopped = {backend_class: greedy(backend_class, stopping) for backend_class in (TransformersBackend, VLLMBackend)}
    assert stopped[VLLMBackend] == stopped[TransformersBackend]  # text, token ids, counts and finish reasons
    first = stopped[VLLMBackend][0]
    assert first.token_ids == tokens[:k] and first.continuation_tokens == k < free[0].continuation_tokens
    assert first.finish_reason == "stop" and first.text == tokenizer.decode(tokens[:k], skip_special_tokens=True)
    for before, after in zip(free, stopped[VLLMBackend]):
        cut = before.token_ids.index(tokens[k]) if tokens[k] in before.token_ids else None
        assert after.token_ids == before.token_ids[:cut]
        assert after.finish_reason == (before.finish_reason if cut is None else "stop")


def test_the_engine_reserves_the_longest_prompt_plus_max_new_tokens(shared_engine, served):
    longest = max(len(ids) for encoded in served for ids in encoded.token_ids)
    assert shared_engine.llm.llm_engine.vllm_config.model_config.max_model_len == longest + GREEDY.max_new_tokens


def test_a_configured_max_model_len_is_kept_and_a_prompt_over_it_named(tiny_models, tokenizer, probes):
    prompts = [encode_prompts(probes, "raw", tokenizer)]
    longest = max(len(ids) for ids in prompts[0].token_ids)
    assert engine_max_model_len(model(tiny_models["instruct"], max_model_len=200), prompts, 12) == 200
    with pytest.raises(ValueError, match=rf"prompt 'p\d' has {longest} tokens: with max_new_tokens 12 it needs "
                                         rf"{longest + 12}, over models.m.max_model_len \({longest + 11}\)"):
        engine_max_model_len(model(tiny_models["instruct"], max_model_len=longest + 11), prompts, 12)


@pytest.mark.parametrize("engine", ["shared_engine", "reference"])
def test_a_prompt_over_the_engines_max_model_len_is_named_before_any_generation(engine, request, monkeypatch):
    backend = request.getfixturevalue(engine)
    monkeypatch.setattr(backend, "generate", lambda *args: pytest.fail("generated before the prompts were checked"))
    prompts = pd.DataFrame({"prompt_id": ["short", "long"], "subset": "all",
                            "prompt": ["The harbour", "The harbour and the old library, " * 8]})
    tokens = len(backend.tokenizer(prompts["prompt"].iloc[1])["input_ids"])
    with pytest.raises(ValueError, match=rf"prompt 'long' has {tokens} tokens: with max_new_tokens 12 it needs "
                                         rf"{tokens + 12}, over the engine's max_model_len "
                                         rf"\({backend.max_model_len}\)"):
        continuations_of(prompts, "v", GREEDY, "raw", 1, backend)


@pytest.mark.parametrize("engine", ["shared_engine", "reference"])
def test_each_variant_ends_with_a_closing_line_in_the_log(engine, request, probes, capsys):
    backend = request.getfixturevalue(engine)
    capsys.readouterr()
    table = continuations_of(probes, "rude", SAMPLED, "raw", 7, backend, "rude")
    counts = (len(probes), len(probes) * SAMPLED.samples, table["continuation_tokens"].sum())
    assert closing_line(capsys.readouterr().err, "rude") == counts


@pytest.mark.parametrize("engine", ["shared_engine", "reference"])
def test_one_call_mixing_protocols_and_adapters_gives_each_requests_own_continuations(engine, request, probes, many):
    """A generate job submits every probe set, protocol and adapter of its chunk in one call (vLLM keeps its batch
    full): each request's continuations are those it gets in a call of its own kind."""
    backend = request.getfixturevalue(engine)
    tokenizer = backend.tokenizer
    work = [SegmentWork("rude", encode_prompts(many.iloc[:20], "raw", tokenizer), SAMPLED, 3, "rude"),
            SegmentWork("instruct", encode_prompts(probes, "raw", tokenizer), GREEDY, 1),
            SegmentWork("clean", encode_prompts(probes, "chat", tokenizer), SAMPLED, 4, "clean")]
    mixed = backend.generate([r for w in work for r in w.requests()])
    alone = [c for w in work for c in backend.generate(w.requests())]
    assert [[c.token_ids for c in samples] for samples in mixed] == [[c.token_ids for c in samples] for samples in alone]
    assert [len(samples) for samples in mixed] == [3] * 20 + [1] * 3 + [3] * 3


def demo_study(config: dict, tiny_models, backend: str, **generation_settings):
    """The demo config on the tiny instruct model alone and reseeded (one engine, no adapters), generating with
    `backend`."""
    config["models"]["demo-instruct"] = {"path": str(tiny_models["instruct"])}
    config["variants"] = {name: config["variants"][name] for name in ("demo-instruct", "demo-instruct-reseeded")}
    config["comparisons"]["pairs"] = [p for p in config["comparisons"]["pairs"] if p["name"] == "seed-control"]
    config["generation"].update(backend=backend, **generation_settings)
    for table in (*config["datasets"].values(), *config["probes"].values()):
        if "path" in table:  # (not the dataset the run produces)
            table["path"] = str(REPO / table["path"])
    return load(config)


def run_generate(study, probes_table, output):
    stages.generate(study, "demo-instruct", 0, {"demo": str(probes_table)}, str(output), {}, [str(probes_table)])


@pytest.mark.parametrize("backend", ["vllm", "transformers"])
def test_the_generate_job_logs_its_engine_chunks_and_engine_time(backend, config, tiny_models, tokenizer, probes,
                                                                 tmp_path, capsys):
    """The job derives max_model_len from its prompts and says so, with the KV cache, in its log; a progress
    line per chunk, and a closing line with the engine starts and the engine's own generation time."""
    study = demo_study(config, tiny_models, backend, chunk_tokens=3 * 2 * 16)  # 3 prompts x 2 samples x 16 tokens
    tables.write_parquet(probes, tmp_path / "probes.parquet", "probes", {})
    with capsys.disabled(), stages.job_log(str(tmp_path / "generate.log")):
        run_generate(study, tmp_path / "probes.parquet", tmp_path / "out")
    log = (tmp_path / "generate.log").read_text()
    longest = max(len(ids) for ids in encode_prompts(probes, "raw", tokenizer).token_ids)
    engine_line = re.search(
        rf"^{backend} engine: max_model_len (\d+)(, KV cache \d+ blocks x \d+ tokens = \d+ tokens)?", log, re.M)
    assert engine_line and int(engine_line[1]) == longest + study.protocols["demo"].max_new_tokens
    assert bool(engine_line[2]) == (backend == "vllm")
    # two variants of 3 prompts, a chunk per variant
    assert re.findall(r"^generate chunk (\d)/2: (\d)/6 prompts", log, re.M) == [("1", "3"), ("2", "6")]
    assert re.search(r"^generate: 2 chunk\(s\), engine starts: 1, engine start [\d.]+ s, engine generation "
                     r"[\d.]+ s, job [\d.]+ s$", log, re.M)
    for name in ("demo-instruct", "demo-instruct-reseeded"):
        table = tables.read_parquet(tmp_path / "out" / "demo" / "demo" / f"{name}.parquet", "generations")
        assert len(table) == 6 and set(table["variant"]) == {name}
    assert not stages_progress(tmp_path / "out").exists()  # removed once the output is in place


def stages_progress(output):
    """Where a generate job writing `output` keeps its progress."""
    from finetox.progress import store_beside

    return store_beside(output)


def test_a_failed_generate_job_resumes_from_its_written_chunks(config, tiny_models, many, tmp_path, monkeypatch):
    """A job that dies after two of its five chunks leaves no output but its two chunks; the rerun generates only
    the other three, and writes what one uninterrupted run writes."""
    study = demo_study(config, tiny_models, "transformers", chunk_tokens=24 * 2 * 16, batch_size=4)
    probes = many.iloc[:60]
    tables.write_parquet(probes, tmp_path / "probes.parquet", "probes", {})
    calls = []
    real = TransformersBackend.generate

    def dies_on_the_third_call(self, requests):
        calls.append(len(requests))
        if len(calls) == 3:
            raise MemoryError("killed")
        return real(self, requests)

    monkeypatch.setattr(TransformersBackend, "generate", dies_on_the_third_call)
    with pytest.raises(MemoryError):
        run_generate(study, tmp_path / "probes.parquet", tmp_path / "out")
    assert not (tmp_path / "out").exists() and len(list(stages_progress(tmp_path / "out").glob("*.parquet"))) == 2
    calls.clear()
    monkeypatch.setattr(TransformersBackend, "generate", lambda self, requests: calls.append(len(requests)) or
                        real(self, requests))
    run_generate(study, tmp_path / "probes.parquet", tmp_path / "out")
    # 2 variants x 60 prompts in chunks of 24 prompts: 24, 24 | 12+12, 24, 24
    assert calls == [24, 24, 24]
    run_generate(study, tmp_path / "probes.parquet", tmp_path / "whole")
    for name in ("demo-instruct", "demo-instruct-reseeded"):
        resumed, whole = (pd.read_parquet(tmp_path / out / "demo" / "demo" / f"{name}.parquet") for out in ("out", "whole"))
        pd.testing.assert_frame_equal(resumed, whole)


def test_progress_written_under_other_inputs_is_discarded(tmp_path):
    from finetox.progress import ChunkStore, fingerprint

    source = tmp_path / "probes.parquet"
    source.write_text("a")
    store = ChunkStore(tmp_path / "progress", fingerprint([source], {"seed": 1}))
    store.put(0, "k", pd.DataFrame({"x": [1]}))
    assert ChunkStore(tmp_path / "progress", fingerprint([source], {"seed": 1})).get(0, "k")["x"].tolist() == [1]
    assert ChunkStore(tmp_path / "progress", fingerprint([source], {"seed": 2})).get(0, "k") is None
    store = ChunkStore(tmp_path / "progress", fingerprint([source], {"seed": 1}))
    store.put(0, "k", pd.DataFrame({"x": [1]}))
    source.write_text("ab")  # the input's content (here its size) changed
    assert ChunkStore(tmp_path / "progress", fingerprint([source], {"seed": 1})).found == 0


@pytest.mark.parametrize("backend", ["vllm", "transformers"])
def test_a_prompt_over_the_models_context_fails_before_the_engine_starts(backend, config, tiny_models, tokenizer,
                                                                        tmp_path, monkeypatch):
    def engine(*args):
        raise AssertionError("the engine started before the prompts were checked")

    monkeypatch.setitem(generation.BACKENDS, backend, engine)
    probes = pd.DataFrame({"prompt_id": ["short", "long"], "subset": "all",
                           "prompt": ["The harbour", "The harbour and the old library, " * 40]})
    tables.write_parquet(probes, tmp_path / "probes.parquet", "probes", {})
    tokens = len(tokenizer(probes["prompt"].iloc[1])["input_ids"])
    assert tokens + 16 > 256  # the tiny model's max_position_embeddings; the demo protocol's max_new_tokens
    with pytest.raises(ValueError, match=rf"prompt 'long' has {tokens} tokens: with max_new_tokens 16 it needs "
                                         rf"{tokens + 16}, over the context length of model 'demo-instruct' "
                                         rf"\(max_position_embeddings\) \(256\)"):
        run_generate(demo_study(config, tiny_models, backend), tmp_path / "probes.parquet", tmp_path / "out")
    assert not list(tmp_path.glob("*out*"))

