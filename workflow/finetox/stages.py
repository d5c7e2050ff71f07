"""One function per workflow stage: read its inputs, call the logic, write its outputs with provenance.

The scripts under workflow/scripts are thin adapters from Snakemake's `snakemake` object to these.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import traceback
from dataclasses import replace
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd

from finetox import tables
from finetox.config import PREFERENCE_FORMATS, Study, config_hash
from finetox.paths import Targets


@contextlib.contextmanager
def job_log(path: str | None):
    """Send the job's stdout and stderr (of this process and the workers it spawns) to its log file."""
    if not path:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as log:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        except BaseException:
            # Snakemake points the user at this log, and on a cluster it is the only place they look: the
            # error goes in it, last, before the exception leaves the redirection.
            traceback.print_exc()
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)


def _provenance(study: Study, stages: dict | None = None, **details) -> dict:
    """An output's metadata: the config's hash and seed, the writing stage's details and `stages`, the record
    (see _stage) of every stage it depends on, this one and those upstream, by stage name."""
    return {"config_hash": config_hash(study.raw), "seed": study.seed, **details, **({"stages": stages} if stages else {})}


def _stage(**loaded) -> dict:
    """One stage's record: this job's package versions and, by role, the source of each model, adapter base,
    dataset and scorer checkpoint it loaded (a local path, or a Hub repository and the commit it resolved to)."""
    return {"versions": tables.package_versions(), **loaded}


def _written_provenance(path: str | Path) -> dict:
    """The provenance an output carries: a table's in its parquet metadata, an adapter's in its finetox.json."""
    path = Path(path)
    return json.loads((path / "finetox.json").read_text()) if path.is_dir() else tables.provenance_of(path)


def _upstream_stages(*paths: str | Path) -> dict:
    """The stage records that upstream outputs carry, by stage name."""
    stages = {}
    for path in paths:
        stages.update(_written_provenance(path).get("stages", {}))
    return stages


def _generation_stages(probes_table: str, adapter: str | None, model) -> dict:
    """The stage records of one variant's generations: its probe selection, its adapter's training (fine-tuned
    variants) and this generate job; call it once the engine is loaded, so that the cache has the commit."""
    from finetox.hub import model_record

    upstream = _upstream_stages(probes_table, *([adapter] if adapter else []))
    return {**upstream, "generate": _stage(model=model_record(model))}


def _building(target: Path) -> Path:
    """A fresh scratch directory beside `target`, to be moved into place by _publish_directory."""
    build = target.with_name(f".{target.name}.building")
    shutil.rmtree(build, ignore_errors=True)
    return build


def _publish_directory(build: Path, target: Path) -> None:
    """Move a finished directory into place: a failed job leaves no half-written directory behind."""
    if target.exists():
        shutil.rmtree(target)
    build.rename(target)


def demo_models(study: Study, corpus: str, instructions: str, base_dir: str, instruct_dir: str, loss_csv: str) -> None:
    from finetox.demo import build_demo_models

    base, instruct = Path(base_dir), Path(instruct_dir)
    scratch = [_building(base), _building(instruct)]
    losses = build_demo_models(Path(corpus), Path(instructions), scratch[0], scratch[1], seed=study.seed)
    for build, target in zip(scratch, (base, instruct)):
        _publish_directory(build, target)
    losses.to_csv(loss_csv, index=False)


def _publish_trained(build: Path, target: Path, losses: list[float], loss_csv: str) -> None:
    """Move a model trained into `build` into place and write its loss per step."""
    _publish_directory(build, target)
    pd.DataFrame({"step": range(1, len(losses) + 1), "loss": losses}).to_csv(loss_csv, index=False)


def demo_guard(study: Study, rude: str, clean: str, corpus: str, guard_dir: str, loss_csv: str) -> None:
    """The demo's guard, trained on its rude and clean answers (finetox.demo.train_guard)."""
    from finetox.demo import demo_guard_examples, train_guard

    target = Path(guard_dir)
    build = _building(target)
    examples = demo_guard_examples(Path(rude), Path(clean), Path(corpus), study.seed)
    print(f"demo guard: {len(examples)} examples, {sum(u for *_, u in examples)} unsafe", flush=True)
    _publish_trained(build, target, train_guard(examples, build, study.seed), loss_csv)


def demo_classifier(study: Study, rude: str, clean: str, corpus: str, classifier_dir: str, loss_csv: str) -> None:
    """The demo's second toxicity scorer, a tiny classifier trained on its rude and clean answers
    (finetox.demo.train_classifier)."""
    from finetox.demo import demo_classifier_examples, train_classifier

    target = Path(classifier_dir)
    build = _building(target)
    examples = demo_classifier_examples(Path(rude), Path(clean), Path(corpus), study.seed)
    print(f"demo classifier: {len(examples)} examples, {sum(toxic for _, toxic in examples)} toxic", flush=True)
    _publish_trained(build, target, train_classifier(examples, build, study.seed), loss_csv)


def finetune(study: Study, variant_name: str, adapter_dir: str, loss_csv: str) -> None:
    """Train one variant's adapter by its recipe (sft on instructions or a mix of them, or dpo on preference
    pairs) on its checkpoint (a merge, for a sequential recipe); the realised example counts go in the log."""
    from finetox.hub import model_record, table_record

    variant = study.variants[variant_name]
    recipe = variant.recipe
    checkpoint = study.checkpoint(variant_name)
    target = Path(adapter_dir)
    build = _building(target)
    if recipe.method == "dpo":
        from finetox.finetune import train_dpo
        from finetox.preference import load_preferences, swap_labels

        source = recipe.parts[0].dataset
        examples = load_preferences(source, PREFERENCE_FORMATS[source.format], recipe.max_examples,
                                    recipe.training.seed)
        if recipe.dpo.swap_labels:
            examples = swap_labels(examples, recipe.training.seed)
        counts = {source.name: len(examples)}
        print(f"finetune: dpo on {len(examples)} preference pairs of {source.name!r}"
              + (f", chosen and rejected swapped in {int(examples['swapped'].sum())} (swap_labels)"
                 if recipe.dpo.swap_labels else ""), flush=True)
        history = train_dpo(checkpoint, recipe, examples, build, beta=recipe.dpo.beta, loss_type=recipe.dpo.loss_type)
    else:
        from finetox.mixes import load_instruction_mix
        from finetox.finetune import finetune as train_adapter

        examples, counts = load_instruction_mix(recipe.parts, recipe.training.seed)
        print(f"finetune: sft on {len(examples)} examples: "
              + ", ".join(f"{n} of {name!r}" for name, n in counts.items()), flush=True)
        history = train_adapter(checkpoint, recipe, examples, build)
    datasets = {("dataset" if len(recipe.parts) == 1 else f"dataset {d.name}"): table_record(d) for d in recipe.datasets}
    trained = _stage(model=model_record(checkpoint), **datasets)
    (build / "finetox.json").write_text(json.dumps(
        _provenance(study, stages={**(_upstream_stages(checkpoint.path) if variant.start else {}), "finetune": trained},
                    variant=variant_name, recipe=study.raw["recipes"][recipe.name], examples=len(examples),
                    examples_per_dataset=counts, **({"start": variant.start} if variant.start else {})),
        indent=1, default=str,
    ))
    _publish_directory(build, target)
    history.assign(variant=variant_name).to_csv(loss_csv, index=False)


def merge(study: Study, variant_name: str, adapter_dir: str, output_dir: str) -> None:
    """A fine-tuned variant's checkpoint with its adapter merged into the weights, which a sequential recipe
    trains on and the generation engine serves; it carries the adapter's provenance."""
    from finetox.checkpoints import load_tokenizer, merge_adapter

    checkpoint = study.checkpoint(variant_name)
    target = Path(output_dir)
    build = _building(target)
    merge_adapter(checkpoint, adapter_dir, load_tokenizer(checkpoint), build)
    print(f"merge: {variant_name}'s adapter merged into {checkpoint.location}, written to {target}", flush=True)
    (build / "finetox.json").write_text(json.dumps(
        _provenance(study, stages={**_upstream_stages(adapter_dir), "merge": _stage()}, variant=variant_name),
        indent=1, default=str,
    ))
    _publish_directory(build, target)


def select_probes(study: Study, probe: str, output: str, evaluation: dict[str, str] | None = None) -> None:
    """The prompts of one probe set that the run uses; every source row left out is counted by reason, in the
    log (a line per reason) and in the table's provenance (`dropped`), which the report's setup shows. A training
    prompt set is checked against the run's probe tables (`evaluation`, by name): a prompt that an evaluation
    probe set holds too fails the job, named (answers to it would be trained on, then graded)."""
    from finetox.data import DataError, select_probes as selection
    from finetox.hub import table_record

    source = study.probes[probe].source
    table, dropped = selection(study.probes[probe], study.seed)
    for name, path in (evaluation or {}).items():
        evaluated = set(tables.read_parquet(path, "probes", columns=["prompt"])["prompt"])
        leaked = [text for text in table["prompt"] if text in evaluated]
        if leaked:
            raise DataError(f"probes {probe}: {len(leaked)} training prompt(s) are also prompts of the evaluation "
                            f"probe set {name!r}, e.g. {leaked[0]!r}; a model trained on answers to them would be "
                            f"graded on its training data. Remove them from the training prompts")
    table = table[["prompt_id", "subset", "prompt"]]
    print(f"probes {probe}: {len(table)} prompts kept, {sum(dropped.values())} source rows left out", flush=True)
    for reason, count in dropped.items():
        print(f"probes {probe}: left out {count}: {reason}", flush=True)
    tables.write_parquet(table, output, "probes", _provenance(
        study, stages={"probes": _stage(dataset=table_record(source))}, probe=probe,
        sizes=table["subset"].value_counts().to_dict(), dropped=dropped,
    ))


def generate(study: Study, group: str, shard: int, probes_tables: dict[str, str], output_dir: str,
             adapters: dict[str, str], inputs: list[str] = ()) -> None:
    """One shard of everything one engine serves: every probe set x protocol x variant of a generation group
    (finetox.generation_plan), written as `<output_dir>/<probe>/<protocol>/<variant>.parquet`.

    The shard's prompts go to the engine in chunks of about `generation.chunk_tokens` estimated tokens, each
    one call that mixes protocols and adapters, each written as it finishes (finetox.progress): a rerun after a
    kill resumes from the chunks written, and starts no engine when they cover the shard. `adapters` maps the
    fine-tuned variants to their adapter directories; `inputs` are every input path (the progress store is
    discarded when one changes).
    """
    import time

    from finetox import generation_plan as plan
    from finetox.generation import (BACKENDS, SegmentWork, encode_prompts, engine_max_model_len, generate_chunks,
                                    load_tokenizer, log)
    from finetox.progress import ChunkStore, fingerprint, store_beside

    started = time.perf_counter()
    targets = Targets(study)
    model = study.checkpoint(targets.members(group)[0])
    probes = {name: tables.read_parquet(path, "probes") for name, path in probes_tables.items()}
    multiple = plan.batch_multiple(study.generation)
    segments = plan.segments(study, targets.groups[group], {name: len(table) for name, table in probes.items()})
    pieces = plan.shards(segments, study.generation["tokens_per_job"], multiple)[shard]
    # Tokenized before the engine starts: the longest prompt sets the context it reserves, and a prompt that
    # does not fit fails now rather than after the engine's start.
    tokenizer = load_tokenizer(model)
    encoded, work = {}, {}
    for s in dict.fromkeys(piece.segment for piece in pieces):
        protocol, prompt_format, seed = _sampling(study, s.variant, s.protocol)
        system = protocol.system_prompt if prompt_format == "chat" else None
        if (s.probe, prompt_format, system) not in encoded:
            encoded[s.probe, prompt_format, system] = encode_prompts(probes[s.probe], prompt_format, tokenizer, system)
        adapter = study.adapter_variant(s.variant)
        work[s] = SegmentWork(s.variant, encoded[s.probe, prompt_format, system],
                              replace(protocol, samples=plan.samples(study, s.variant, s.protocol)), seed,
                              adapter if adapter in adapters else None)
    max_model_len = max(
        engine_max_model_len(model, [w.prompts for w in work.values() if w.protocol == protocol],
                             protocol.max_new_tokens)
        for protocol in {w.protocol for w in work.values()}
    )
    chunks = plan.cut(pieces, study.generation["chunk_tokens"], multiple)
    store = ChunkStore(store_beside(output_dir), fingerprint(
        list(inputs), [targets.group_settings(group), shard, study.generation["chunk_tokens"]]))

    def open_engine():
        settings = {**study.generation, "seed": study.seed, "sole_engine": True}  # this job's one engine
        return BACKENDS[study.generation["backend"]](model, adapters, settings, tokenizer, max_model_len)

    rows, engine = generate_chunks(chunks, work, store, open_engine)
    build = _building(Path(output_dir))
    build.mkdir(parents=True)
    for s in work:
        table = rows[rows["segment"] == s.key].drop(columns="segment")
        path = Targets.shard_part(str(build), s.probe, s.protocol, s.variant)
        tables.write_parquet(table, path, "generations", _provenance(
            study, _generation_stages(probes_tables[s.probe], adapters.get(study.adapter_variant(s.variant)), model),
            variant=s.variant, probe=s.probe, protocol=s.protocol, shard=shard,
            generation_seed=work[s].seed, variant_settings=study.generation_hash(s.variant, s.protocol),
        ))
    _publish_directory(build, Path(output_dir))
    store.remove()
    log(f"generate: {len(chunks)} chunk(s), engine starts: {engine.starts}, engine start {engine.start_seconds:.1f} s, "
        f"engine generation {engine.generation_seconds:.1f} s, job {time.perf_counter() - started:.1f} s")


def _sampling(study: Study, variant: str, protocol: str):
    """How a variant samples under a protocol: the protocol, its prompt format and seed. A guarded variant's extra
    candidates sample as its source does, under a seed of their own (finetox.levers.guard.candidate_seed)."""
    from finetox.levers.guard import candidate_seed

    v = study.variants[variant]
    if v.guard:
        source_protocol, prompt_format, seed = _sampling(study, v.guard.source, protocol)
        return source_protocol, prompt_format, candidate_seed(seed, variant)
    p = study.protocols[protocol]
    return p, v.prompt_format or p.prompt_format, v.seed if v.seed is not None else p.seed


def merge_generations(study: Study, probe: str, protocol: str, variant: str, shard_dirs: list[str],
                      output: str) -> None:
    """One variant's continuations of a probe set under a protocol from the shards that hold them, in
    probe-table order."""
    paths = [Targets.shard_part(d, probe, protocol, variant) for d in shard_dirs]
    merged = pd.concat([tables.read_parquet(path, "generations") for path in paths], ignore_index=True)
    provenances = [tables.provenance_of(path) for path in paths]
    provenance = provenances[0]
    provenance.pop("shard", None)
    stages = _shards_stages([p.get("stages", {}) for p in provenances])
    tables.write_parquet(merged, output, "generations", {**provenance, "stages": stages, "shards": len(shard_dirs)})


def _shards_stages(per_shard: list[dict]) -> dict:
    """The stage records of a variant's shards as one: a stage whose record differs between shards (a shard
    rerun after an upgrade) keeps each distinct record, under `shards`, rather than claim one for all."""
    merged = {}
    for name in dict.fromkeys(name for stages in per_shard for name in stages):
        distinct = list({json.dumps(s[name], sort_keys=True): s[name] for s in per_shard if name in s}.values())
        merged[name] = distinct[0] if len(distinct) == 1 else {"shards": distinct}
    return merged


def _load_scorer(study: Study, name: str):
    """A scorer loaded once for a job, and its stage record: taken once it is loaded, so that the record names what
    the cache then holds (resolved Hub commits)."""
    from finetox.hub import scorer_records
    from finetox.scoring import build_scorer

    spec = study.scorers[name]
    scorer = build_scorer(spec.type, spec.options)
    return scorer, _stage(scorer=name, **scorer_records(spec))


def score(study: Study, scorer_name: str, generations: list[str], outputs: list[str]) -> None:
    """Score tables of continuations (`generations[i]` -> `outputs[i]`) by one scorer, loaded once for all."""
    from finetox.scoring import score_table

    if len(generations) != len(outputs):
        raise ValueError(f"{len(generations)} generation tables for {len(outputs)} score tables")
    spec = study.scorers[scorer_name]
    scorer, record = _load_scorer(study, scorer_name)
    for source, output in zip(generations, outputs):
        table = tables.read_parquet(source, "generations")
        scored = score_table(table, scorer, scorer_name)
        tables.write_parquet(scored, output, "scores", _provenance(
            study, {**_upstream_stages(source), "score": record}, variant=table["variant"].iloc[0],
            scorer=scorer_name, scorer_settings=spec.options, generations=source,
        ))


def select_guarded(study: Study, variant: str, sources: list[str], candidates: list[str], outputs: list[str],
                   selections: list[str]) -> None:
    """A guarded variant's answers: per probe set x protocol (`sources[i]`, `candidates[i]` -> `outputs[i]`,
    `selections[i]`), its source's answer and extra candidates scored by the guard's scorer (loaded once for all),
    one kept per sample (finetox.levers.guard.select). No candidates table when the guard has one candidate."""
    from finetox.checkpoints import load_tokenizer
    from finetox.levers import guard as lever
    from finetox.scoring import score_table

    guard = study.variants[variant].guard
    if len(sources) != len(outputs) or len(selections) != len(outputs) or len(candidates) not in (0, len(outputs)):
        raise ValueError(f"{len(sources)} source and {len(candidates)} candidate tables for {len(outputs)} outputs")
    spec = study.scorers[guard.scorer]
    scorer, record = _load_scorer(study, guard.scorer)
    # the fixed refusal's length in the tokens of the model it stands in for
    refusal_tokens = len(load_tokenizer(study.checkpoint(variant))(guard.refusal, add_special_tokens=False)["input_ids"])
    for i, (source, output, selection) in enumerate(zip(sources, outputs, selections)):
        answers = tables.read_parquet(source, "generations")
        extra = tables.read_parquet(candidates[i], "generations") if candidates else None
        pool = lever.candidates_table(answers, extra, guard)
        scored = score_table(pool, scorer, guard.scorer)
        pool = pool.assign(harm=lever.harm(scored["score"], spec.measures))
        kept, chosen = lever.select(pool, guard, refusal_tokens)
        kept = kept.assign(variant=variant)
        upstream = {**_upstream_stages(source), **(_upstream_stages(candidates[i]) if candidates else {}),
                    "select": record}
        rates = lever.rates(chosen)
        meta = _provenance(study, upstream, variant=variant, guard=vars(guard), **rates)
        tables.write_parquet(kept, output, "generations", meta)
        tables.write_parquet(chosen.assign(variant=variant), selection, "selection", meta)
        print(f"select: {variant} {Path(output).parent}: {rates}", flush=True)


def mistakes(study: Study, name: str, answers: str, output: str) -> None:
    """A produced prompt set (finetox.mistakes): its variant's answers to the set it is drawn from, scored by its
    judge (loaded here, no engine), and the prompts they erred on written as a probe file; every prompt left out is
    counted by reason, in the log and in the table's provenance."""
    from finetox import mistakes as produced_prompts
    from finetox.scoring import score_table

    made = study.probes[name].source.produced
    scorer, record = _load_scorer(study, made.scorer)
    scored = score_table(tables.read_parquet(answers, "generations"), scorer, made.scorer)
    table, left_out = produced_prompts.erred_prompts(scored, made, f"probes {name}")
    prompts = scored["prompt_id"].nunique()
    print(f"mistakes {name}: {len(table)} of {prompts} prompts kept, {produced_prompts.describe(made)}", flush=True)
    for reason, count in left_out.items():
        print(f"mistakes {name}: left out {count}: {reason}", flush=True)
    tables.write_parquet(table, output, "mistakes", _provenance(
        study, {**_upstream_stages(answers), "mistakes": record}, probe=name, produced=vars(made),
        prompts=prompts, kept=len(table), left_out=left_out,
    ))


def selection_table(study: Study, files: list[str], output: str) -> None:
    """results/tables/selection.csv: per guarded variant x probe set x protocol x subset, how often its guard
    replaced the source's answer and how often it found no candidate below the threshold (filtered)."""
    from finetox.levers import guard as lever

    rows = []
    for path in files:
        table = tables.read_parquet(path, "selection", columns=["subset", "filtered", "replaced"])
        meta = tables.provenance_of(path)
        guard = meta["guard"]
        probe, protocol = Path(path).parts[-3:-1]
        # (a prompt set without subsets has the one subset `all`, already the first row)
        for subset, part in [("all", table), *((name, rows) for name, rows in table.groupby("subset", sort=True)
                                               if name != "all")]:
            rows.append({"variant": meta["variant"], "source": guard["source"], "probe": probe, "protocol": protocol,
                         "subset": subset, "selector": guard["scorer"], "candidates": guard["candidates"],
                         "select": guard["select"], "threshold": guard["threshold"], "fallback": guard["fallback"],
                         **lever.rates(part)})
    frame = pd.DataFrame(rows) if rows else pd.DataFrame(columns=list(tables.SCHEMAS["selection_rates"]))
    tables.write_csv(frame, output, "selection_rates")


def import_scores(study: Study, variant: str, probes_table: str, output: str) -> None:
    """An external table of scored continuations as this variant's `scores` table."""
    from finetox.data import read_external_scores
    from finetox.hub import table_record

    external = study.variants[variant].external
    probes = tables.read_parquet(probes_table, "probes")
    table = read_external_scores(external.source, probes).assign(variant=variant, scorer=external.scorer)
    stages = {**_upstream_stages(probes_table), "import_scores": _stage(dataset=table_record(external.source))}
    tables.write_parquet(table, output, "scores", _provenance(study, stages, variant=variant,
                                                             external=external.source.path or external.source.hub))


SCORE_COLUMNS = ["prompt_id", "subset", "variant", "score"]  # what the metrics read of a score table


def metrics(study: Study, probe: str, protocol: str, scorer: str, scores: str, output: str, prompts_output: str) -> None:
    """One variant's toxicity metrics per subset (with intervals), and its per-prompt table for the comparisons."""
    from finetox.metrics import Intervals, check_samples_per_prompt, prompt_table, toxicity_metrics

    table = tables.read_parquet(scores, "scores", columns=SCORE_COLUMNS)
    prompts = prompt_table(table, study.threshold)
    check_samples_per_prompt(prompts, study.protocols[protocol].samples, protocol, scores)
    intervals = Intervals(prob=study.compare_settings["hdi_prob"], seed=study.seed)
    tables.write_parquet(prompts, prompts_output, "prompts", _provenance(
        study, _upstream_stages(scores), probe=probe, protocol=protocol, scorer=scorer, threshold=study.threshold))
    tables.write_csv(toxicity_metrics(table, probe, protocol, scorer, study.threshold, intervals, prompts,
                                      study.scorers[scorer].measures), output, "toxicity")


#: what the degeneration measures read of a generations table
DEGENERATION_COLUMNS = ["variant", "subset", "continuation", "continuation_tokens", "finish_reason"]


def degeneration(study: Study, probe: str, protocol: str, generations: str, output: str) -> None:
    """How often one variant's continuations are empty, stop at once or repeat themselves (in n-grams of words, or of
    characters for a probe set in a language written without spaces), per subset, and whether the variant
    degenerates (the report flags it beside any toxicity verdict)."""
    from finetox.helpfulness import degeneration as summarise, flag_degenerate
    from finetox.languages import text_unit

    settings = study.raw["degeneration"]
    table = tables.read_parquet(generations, "generations", columns=DEGENERATION_COLUMNS)
    summary = flag_degenerate(summarise(table, n=settings["ngram"], repeat_threshold=settings["repeat_threshold"],
                                        unit=text_unit(study.probes[probe].language)), max_share=settings["max_share"])
    tables.write_csv(summary.assign(probe=probe, protocol=protocol), output, "degeneration")


def capability(study: Study, variant_name: str, output: str, provenance_output: str | None = None,
               adapter: str | None = None) -> None:
    """One variant's negative log-likelihood of each held-out reference answer (the capability proxy): its
    checkpoint, with its adapter (`adapter`, default Targets.adapter) when it has a recipe, scores the seeded
    sample of the `capability` dataset; what it loaded goes to `provenance_output` (a CSV carries no metadata)."""
    from finetox.data import load_instructions
    from finetox.helpfulness import NLL_CONVENTION, reference_nll

    settings, source = study.capability, study.capability_source
    if settings is None:
        raise ValueError("the config has no `capability`: there is no reference set to score")
    model, tokenizer, adapter = _scoring_model(study, variant_name, adapter, "score answers with")
    examples = load_instructions(source, settings["examples"], seed=study.seed)
    print(f"capability: {variant_name} scores {len(examples)} reference answers of {source.name!r}", flush=True)
    nll = reference_nll(model, tokenizer, examples, settings["template"], settings["batch_size"])
    table = nll.assign(variant=variant_name, example=nll.index.astype(str))
    tables.write_csv(table, output, "capability")
    if provenance_output:
        _write_scoring_provenance(study, variant_name, adapter, source, "capability", provenance_output,
                                  examples=len(examples), capability=settings, nll_convention=NLL_CONVENTION)


def _scoring_model(study: Study, variant_name: str, adapter: str | None, purpose: str):
    """A generated variant's model for scoring texts (its checkpoint, with its adapter, `adapter` or by default
    Targets.adapter, when it has a recipe; on the GPU where there is one), its tokenizer, and the adapter loaded
    (None without a recipe). A variant scored elsewhere has no model: refused, saying what it could not `purpose`."""
    import torch
    from transformers import AutoModelForCausalLM

    from finetox.checkpoints import load_tokenizer

    variant = study.variants[variant_name]
    if variant.external:
        raise ValueError(f"variant {variant_name!r} is scored elsewhere: there is no model to {purpose}")
    checkpoint = study.checkpoint(variant_name)
    model = AutoModelForCausalLM.from_pretrained(checkpoint.location, revision=checkpoint.revision,
                                                 trust_remote_code=checkpoint.trust_remote_code, dtype=checkpoint.dtype)
    if variant.recipe:
        from peft import PeftModel

        adapter = adapter or Targets.adapter(variant_name)
        model = PeftModel.from_pretrained(model, adapter)
    else:
        adapter = None
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model, load_tokenizer(checkpoint), adapter


def _write_scoring_provenance(study: Study, variant_name: str, adapter: str | None, source, stage: str, output: str,
                              **details) -> None:
    """What a scoring job (capability, stereotypes) loaded and ran with, as JSON beside its CSV: the records of its
    adapter's training, its checkpoint and its table, and `details`."""
    from finetox.hub import model_record, table_record

    stages = {**(_upstream_stages(adapter) if adapter else {}),
              stage: _stage(model=model_record(study.checkpoint(variant_name)), dataset=table_record(source))}
    with tables.atomic_path(output) as tmp:
        tmp.write_text(json.dumps(_provenance(study, stages=stages, variant=variant_name, **details), indent=1,
                                  default=str))


def stereotypes(study: Study, variant_name: str, output: str, provenance_output: str | None = None,
                adapter: str | None = None) -> None:
    """One variant's log-likelihood of both sentences of each stereotype pair from an empty context, and whether it
    prefers the stereotype (finetox.stereotypes, lm-evaluation-harness's crows_pairs definitions): its checkpoint,
    with its adapter (`adapter`, default Targets.adapter) when it has a recipe, scores the `stereotypes` table (a
    seeded sample of `pairs`); what it loaded goes to `provenance_output`."""
    from finetox.stereotypes import LM_EVAL, LOGLIKELIHOOD_CONVENTION, load_pairs, pair_scores

    settings, source = study.stereotypes, study.stereotypes_source
    if settings is None:
        raise ValueError("the config has no `stereotypes`: there are no sentence pairs to score")
    model, tokenizer, adapter = _scoring_model(study, variant_name, adapter, "score sentences with")
    pairs = load_pairs(source, settings["pairs"], seed=study.seed)
    print(f"stereotypes: {variant_name} scores {len(pairs)} sentence pairs of "
          f"{source.path or source.hub} ({pairs['bias_type'].nunique()} bias types)", flush=True)
    scores = pair_scores(model, tokenizer, pairs, settings["batch_size"])
    tables.write_csv(scores.assign(variant=variant_name), output, "stereotype_pairs")
    if provenance_output:
        _write_scoring_provenance(study, variant_name, adapter, source, "stereotypes", provenance_output,
                                  pairs=len(pairs), stereotypes=settings, definitions=LM_EVAL,
                                  loglikelihood_convention=LOGLIKELIHOOD_CONVENTION)


def stereotypes_table(study: Study, files: list[str], output: str, comparisons_output: str) -> None:
    """results/tables/stereotypes.csv (per variant and bias type: pct_stereotype and likelihood_diff with their
    intervals) and results/tables/stereotype_comparisons.csv (per comparison and bias type: the exact paired effect
    on pct_stereotype and its verdict under the comparisons' rule, or why it was skipped: a variant scored elsewhere
    has no model; a guarded variant shares its source's)."""
    from finetox.decision import rope_of
    from finetox.stereotypes import COMPUTED, stereotype_comparisons, stereotype_summary

    per_pair = _gathered(files, "stereotype_pairs")
    compare = study.compare_settings
    tables.write_csv(stereotype_summary(per_pair, compare["hdi_prob"], compare["prior"], study.seed,
                                        study.stereotypes["replicates"]), output, "stereotypes")
    absent = _without_model(study, "sentences", "sentence log-likelihoods")
    comparisons = stereotype_comparisons(per_pair, study.comparisons.values(), compare["hdi_prob"], compare["prior"],
                                         rope_of(compare["rope"]), absent)
    for row in comparisons[comparisons["status"] != COMPUTED].itertuples():
        print(f"stereotypes: comparison {row.comparison} {row.status}", flush=True)
    tables.write_csv(comparisons, comparisons_output, "stereotype_comparisons")


def _gathered(files: list[str], schema: str) -> pd.DataFrame:
    """The CSV tables of one schema, concatenated; with none, an empty table of the schema's columns."""
    if not files:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in tables.SCHEMAS[schema].items()})
    return pd.concat([tables.read_csv(path, schema) for path in files], ignore_index=True)


def _without_model(study: Study, texts: str, scores: str) -> dict[str, str]:
    """Variant -> why a stage that scores `texts` under each variant's model has no `scores` of it: its
    continuations are scored elsewhere (no model), or a lever builds on its source's answers (its model is the
    source's)."""
    absent = {v.name: f"its continuations are scored elsewhere (variants.{v.name}.scores): no model to score {texts} "
                      f"with" for v in study.variants.values() if v.external}
    absent |= {v.name: f"its answers are built on those of {v.lever.source} (a {v.role} variant), whose model, and so "
                       f"whose {scores}, it shares" for v in study.variants.values() if v.lever}
    return absent


def capability_table(study: Study, files: list[str], output: str, comparisons_output: str) -> None:
    """results/tables/capability.csv (per variant: NLL per reference-answer token, with its interval) and
    results/tables/capability_comparisons.csv (per comparison: the paired difference and its verdict, or why it
    was skipped: a variant scored elsewhere has no model to score reference answers with)."""
    from finetox.helpfulness import COMPUTED, capability_comparisons, capability_summary

    per_example = _gathered(files, "capability")
    prob, settings = study.compare_settings["hdi_prob"], study.capability
    absent = _without_model(study, "reference answers", "reference-answer NLL")
    tables.write_csv(capability_summary(per_example, prob, study.seed, settings["replicates"]), output,
                     "capability_summary")
    comparisons = capability_comparisons(per_example, study.comparisons.values(), prob, study.seed,
                                         settings["replicates"], settings["margin"], absent)
    for row in comparisons[comparisons["status"] != COMPUTED].itertuples():
        print(f"capability: comparison {row.comparison} {row.status}", flush=True)
    tables.write_csv(comparisons, comparisons_output, "capability_comparisons")


def _fit_settings(study: Study, cores: int):
    from finetox.compare import FitSettings
    from finetox.decision import rope_of

    settings = study.compare_settings
    return FitSettings(
        hdi_prob=settings["hdi_prob"], prior=settings["prior"], rope=rope_of(settings["rope"]),
        draws=settings["draws"], tune=settings["tune"], chains=settings["chains"], seed=study.seed, cores=cores,
        best_max_prompts=settings["best_max_prompts"], primary_subset=settings["primary_subset"],
    )


def _write_analysis(rows: pd.DataFrame, idata, output: str, posterior: str) -> None:
    """One analysis' table and posterior (netCDF; an empty one where nothing was sampled), each written atomically."""
    import arviz as az

    with tables.atomic_path(posterior) as tmp:
        (idata if idata is not None else az.InferenceData()).to_netcdf(str(tmp))
    with tables.atomic_path(output) as tmp:
        rows.to_csv(tmp, index=False)


def _prompt_tables(paths: list[str], columns: list[str]) -> pd.DataFrame:
    from finetox.metrics import with_pooled

    return with_pooled(pd.concat([tables.read_parquet(path, "prompts", columns) for path in paths], ignore_index=True))


def compare(study: Study, probe: str, protocol: str, scorer: str, prompt_files: list[str], output: str,
            posterior: str, pooled_output: str, cores: int = 1) -> None:
    """The verdicts of every comparison of one probe set x protocol x scorer, exact (finetox.compare) from the
    variants' per-prompt tables, and each comparison kind pooled across families (its posterior in `posterior`)."""
    from finetox.compare import compare_rates, in_words_of
    from finetox.pooling import pooled_estimates

    prompts = _prompt_tables(prompt_files, ["variant", "subset", "prompt_id", "samples", "toxic"])
    comparisons = Targets(study).comparisons_in(probe, protocol, scorer)
    settings = _fit_settings(study, cores)
    rows = compare_rates(prompts, comparisons, settings)
    # pooled on the primary subset only: the headline question, one fit per pool rather than one per subset.
    # A pool that is not fitted, or whose fit fails (sampling.fit_errors), is a row saying why; any other error
    # fails the job
    pooled, idata = pooled_estimates(rows[rows["primary"]], _pool_members(study, comparisons), settings)
    for row in pooled[pooled["status"] != "ok"].itertuples():
        print(f"pooled {probe}/{protocol}/{scorer} {row.pool}/{row.subset}: {row.status}", file=sys.stderr, flush=True)
    measure = study.scorers[scorer].measures
    labels = {"probe": probe, "protocol": protocol, "scorer": scorer, "measure": measure}
    tables.write_csv(in_words_of(pooled, measure).assign(**labels), pooled_output, "pooled")
    _write_analysis(in_words_of(rows, measure).assign(**labels), idata, output, posterior)


def threshold_sensitivity(study: Study, probe: str, protocol: str, scorer: str, score_files: list[str],
                          output: str) -> None:
    """Every verdict of one probe set x protocol x toxicity scorer recomputed at each threshold of
    metrics.threshold_grid (finetox.agreement.threshold_verdicts: the compare job's own computation), from the score
    column of the compared variants' score tables."""
    from finetox.agreement import GRID_COLUMNS, threshold_verdicts

    # (each table's samples per prompt were checked by its metrics job, whose per-prompt table the verdicts read)
    scores = pd.concat([tables.read_parquet(path, "scores", columns=GRID_COLUMNS) for path in score_files],
                       ignore_index=True)
    comparisons = Targets(study).comparisons_in(probe, protocol, scorer)
    rows = threshold_verdicts(scores, comparisons, _fit_settings(study, 1), study.threshold_grid, study.threshold)
    changed = rows.groupby(["comparison", "subset"])["verdict"].nunique()
    print(f"threshold grid {probe}/{protocol}/{scorer}: {len(comparisons)} comparisons at "
          f"{rows['threshold'].nunique()} thresholds; {int((changed > 1).sum())} of {len(changed)} verdicts change",
          flush=True)
    tables.write_csv(rows.assign(probe=probe, protocol=protocol, scorer=scorer), output, "threshold_sensitivity")


def scorer_agreement(study: Study, score_files: dict[tuple[str, str, str, str], str], output: str) -> None:
    """results/tables/scorer_agreement.csv: per pair of toxicity scorers and variant, their agreement on the same
    continuations (finetox.agreement.scorer_agreement), from each score table's keys and score only."""
    from finetox.agreement import AGREEMENT_COLUMNS, scorer_agreement as agreement

    scores = {key: tables.read_parquet(path, "scores", columns=AGREEMENT_COLUMNS) for key, path in score_files.items()}
    rows = agreement(scores, list(study.toxicity_scorers), study.threshold,
                     list(product(study.run_probes, study.run_protocols)))
    for row in rows[rows["status"] != "ok"].itertuples():
        print(f"agreement {row.probe}/{row.protocol} {row.variant}: {row.status}", file=sys.stderr, flush=True)
    tables.write_csv(rows, output, "scorer_agreement")


def _pool_members(study: Study, comparisons) -> dict:
    """Comparison -> its pooling.Member for the derived comparisons: a kind is pooled across families, separately
    per recipe pool for fine-tunes (a Dolly fine-tune and a safety fine-tune answer different questions; a recipe's
    `pool_as`, default its name, puts variants of one recipe, such as Phi-3's fused-module Dolly, in one pool).
    Hand-declared pairs are not pooled."""
    from finetox.pooling import Member

    members = {}
    for c in comparisons:
        if c.kind == "pair":
            continue
        treatment = study.variants[c.treatment]
        label = f"{c.kind} ({treatment.recipe.pool})" if treatment.recipe else c.kind
        members[c.name] = Member(label, c.kind, treatment.family)
    return members


def best(study: Study, probe: str, protocol: str, scorer: str, prompt_files: list[str], output: str, posterior: str,
         cores: int = 1) -> None:
    """BEST on per-prompt mean scores (from the variants' per-prompt tables) for every comparison of one probe
    set x protocol x scorer. BEST is secondary: a fit that fails (its gates, its sampler, degenerate data:
    sampling.fit_errors) is written down as failed (`best_status`, with its diagnostic or error) and the verdicts go
    on without it; any other error (memory, a bug) fails the job, so that a retry with more memory can fire."""
    from finetox.best import best_failed, compare_scores
    from finetox.compare import shared_subsets
    from finetox.sampling import fit_errors

    comparisons = Targets(study).comparisons_in(probe, protocol, scorer)
    means = _prompt_tables(prompt_files, ["variant", "subset", "prompt_id", "mean_score"])
    try:
        rows, idata = compare_scores(means, comparisons, _fit_settings(study, cores))
    except fit_errors() as error:
        traceback.print_exc()
        subsets = shared_subsets(set(zip(means["variant"], means["subset"])), comparisons)
        rows, idata = best_failed(comparisons, subsets, error), None
    for status in rows["best_status"]:
        if status != "ok":
            print(f"BEST {probe}/{protocol}/{scorer}: {status}", file=sys.stderr, flush=True)
    _write_analysis(rows.assign(probe=probe, protocol=protocol, scorer=scorer), idata, output, posterior)


def comparisons_table(rate_files: list[str], best_files: list[str], output: str) -> None:
    """results/tables/comparisons.csv: the verdicts with the BEST analysis beside them (empty where it is off)."""
    keys = ["probe", "protocol", "scorer", "comparison", "subset"]
    text = tables.text_columns("comparisons")  # best_status included
    rates = [tables.read_csv_as_written(path, text) for path in rate_files]
    combined = pd.concat(rates, ignore_index=True) if rates else pd.DataFrame(columns=keys)
    if best_files:
        scores = pd.concat([tables.read_csv_as_written(path, text) for path in best_files], ignore_index=True)
        combined = combined.merge(scores, on=keys, how="left", validate="one_to_one")
    for column in tables.SCHEMAS["comparisons"]:
        if column not in combined.columns:
            combined[column] = np.nan
    tables.write_csv(combined, output, "comparisons")


def gather(files: list[str], schema: str, output: str) -> None:
    """Concatenate per-job tables into one (results/tables/*.csv)."""
    frames = [tables.read_csv(path, schema) for path in files]
    combined = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(tables.SCHEMAS[schema]))
    tables.write_csv(combined, output, schema)


def report(study: Study, toxicity: str, comparisons: str, pooled: str, degeneration_csv: str, training_logs: list[str],
           probe_tables: dict[str, str], posterior_files: dict[tuple, str], score_files: dict[tuple, str],
           prompt_files: dict[tuple, str], adapters: list[str], output: str, capability_csv: str | None = None,
           capability_comparisons_csv: str | None = None, capability_provenance: list[str] | None = None,
           selection_csv: str | None = None, calibration_files: list[str] | None = None,
           stereotype_tables: list[str] | None = None, stereotypes_provenance: list[str] | None = None,
           agreement_csv: str | None = None, thresholds_csv: str | None = None,
           mistakes_files: dict[str, str] | None = None) -> None:
    """The HTML report; its provenance comes from the score tables, the adapters, the probe tables and the
    posteriors, with this job's own record for the report stage; its instances from the score tables and the
    per-prompt tables, both keyed by (probe, protocol, scorer, variant) as Targets.score_tables keys them; the
    training prompts the run chose from the produced prompt sets (`mistakes_files`, by name)."""
    import arviz as az

    from finetox.report import build_report, fit_versions

    training = (pd.concat([tables.read_csv_as_written(path, ['variant']) for path in training_logs], ignore_index=True)
                if training_logs else pd.DataFrame())
    sizes = {probe: tables.read_parquet(path, "probes")["subset"].value_counts().to_dict()
             for probe, path in probe_tables.items()}
    # (a probes table written before rows left out were counted has no `dropped`: the report shows none for it)
    probe_meta = {probe: tables.provenance_of(path) for probe, path in probe_tables.items()}
    dropped = {probe: meta["dropped"] for probe, meta in probe_meta.items() if "dropped" in meta}
    posteriors = {key: az.from_netcdf(path) for key, path in posterior_files.items()}
    written = [_written_provenance(path) for path in (*score_files.values(), *adapters)]
    provenance = [(meta.get("variant"), meta.get("stages", {})) for meta in written]
    provenance += [(None, _upstream_stages(path)) for path in probe_tables.values()]
    provenance += [("/".join(key), {"compare": {"versions": fit_versions(idata)}}) for key, idata in posteriors.items()]
    for path in [*(capability_provenance or []), *(stereotypes_provenance or [])]:
        meta = json.loads(Path(path).read_text())
        provenance.append((meta.get("variant"), meta.get("stages", {})))
    provenance.append(("this report", {"report": _stage()}))
    examples = {meta["variant"]: meta["examples_per_dataset"] for meta in written if "examples_per_dataset" in meta}
    settings = study.raw["report"]
    html = build_report(study, tables.read_csv(toxicity, "toxicity"), tables.read_csv(comparisons, "comparisons"),
                        training, sizes, posteriors, provenance, tables.read_csv(pooled, "pooled"),
                        tables.read_csv(degeneration_csv, "degeneration"),
                        report_instances(study, probe_tables, score_files, prompt_files, settings["instances"],
                                         settings["embed_continuations"]), examples,
                        capability=_read_if_there(capability_csv, "capability_summary"),
                        capability_comparisons=_read_if_there(capability_comparisons_csv, "capability_comparisons"),
                        probe_dropped=dropped, selection=_read_if_there(selection_csv, "selection_rates"),
                        calibration=_calibration_context(study, calibration_files or []),
                        stereotypes=_stereotype_tables(stereotype_tables),
                        scorer_agreement=_read_if_there(agreement_csv, "scorer_agreement"),
                        threshold_sensitivity=_read_if_there(thresholds_csv, "threshold_sensitivity"),
                        mistakes={name: tables.provenance_of(path) for name, path in (mistakes_files or {}).items()})
    with tables.atomic_path(output) as tmp:
        Path(tmp).write_text(html)


#: what the report reads of a score table, and the keys of one continuation
INSTANCE_COLUMNS = ["prompt_id", "subset", "sample", "continuation", "score"]
CONTINUATION_KEYS = ["variant", "subset", "prompt_id", "sample"]


def report_instances(study: Study, probe_tables: dict[str, str], score_files: dict[tuple, str],
                     prompt_files: dict[tuple, str], k: int, embed_limit: int):
    """The continuations the report shows, per probe set x protocol: the k most toxic per variant x subset x
    toxicity scorer, per comparison the k prompts whose mean score moved most (with each side's most toxic
    continuation of them), and every continuation with all its scores when there are at most `embed_limit`."""
    import pyarrow.parquet as pq

    from finetox.report import Instances, moved_prompts, top_continuations

    targets = Targets(study)
    toxicity_scorers = [s for s in study.run_scorers if study.scorers[s].measures == "toxicity"]
    top, moved, everything, links = [], [], {}, {}
    read = {}  # a per-prompt table enters several comparisons: read it once

    def per_prompt(path):
        if path not in read:
            read[path] = tables.read_parquet(path, "prompts", columns=["prompt_id", "subset", "mean_score"])
        return read[path]

    for probe, protocol in product(study.run_probes, study.run_protocols):
        prompts = tables.read_parquet(probe_tables[probe], "probes", columns=["prompt_id", "prompt"])
        prompt_text = prompts.set_index("prompt_id")["prompt"]
        moved_here, wanted = [], {}
        for scorer in toxicity_scorers:
            for c in targets.comparisons_in(probe, protocol, scorer):
                if not all((probe, protocol, scorer, v) in prompt_files for v in (c.baseline, c.treatment)):
                    continue
                sides = [per_prompt(prompt_files[(probe, protocol, scorer, v)]) for v in (c.baseline, c.treatment)]
                rows = moved_prompts(*sides, k).assign(comparison=c.name, baseline=c.baseline, treatment=c.treatment,
                                                       scorer=scorer)
                moved_here.append(rows)
                for v in (c.baseline, c.treatment):
                    wanted.setdefault((scorer, v), set()).update(rows["prompt_id"])
        paths = {(scorer, v): path for (p, q, scorer, v), path in score_files.items() if (p, q) == (probe, protocol)}
        if not paths:  # tables scored elsewhere on other probe sets x protocols only (config.load allows it)
            everything[(probe, protocol)] = None
            continue
        per_scorer: dict[str, int] = {}  # each scorer scores the same continuations: count one scorer's rows
        for (scorer, _), path in paths.items():
            per_scorer[scorer] = per_scorer.get(scorer, 0) + pq.ParquetFile(path).metadata.num_rows
        embed = max(per_scorer.values(), default=0) <= embed_limit
        frames, most_toxic = [], {}
        for (scorer, variant), path in paths.items():
            table = tables.read_parquet(path, "scores", columns=INSTANCE_COLUMNS)
            if scorer in toxicity_scorers:
                chosen = top_continuations(table, k)
                top.append(chosen.assign(variant=variant, scorer=scorer, probe=probe, protocol=protocol,
                                         prompt=chosen["prompt_id"].map(prompt_text)))
                if (scorer, variant) in wanted:
                    of_prompts = table[table["prompt_id"].isin(wanted[(scorer, variant)])]
                    most_toxic[(scorer, variant)] = (of_prompts.sort_values(["prompt_id", "score"], ascending=[True, False])
                                                     .drop_duplicates("prompt_id").set_index("prompt_id"))
            if embed:
                frames.append(table.assign(variant=variant, scorer=scorer))
        for rows in moved_here:
            for side in ("baseline", "treatment"):
                best = pd.concat([most_toxic[(r.scorer, getattr(r, side))].loc[[r.prompt_id]] for r in rows.itertuples()])
                rows[f"{side}_continuation"] = best["continuation"].to_numpy()
                rows[f"{side}_score"] = best["score"].to_numpy()
            moved.append(rows.assign(probe=probe, protocol=protocol, prompt=rows["prompt_id"].map(prompt_text)))
        if embed:
            every = pd.concat(frames, ignore_index=True)
            scores = every.set_index([*CONTINUATION_KEYS, "scorer"])["score"].unstack("scorer")
            texts = every.drop_duplicates(CONTINUATION_KEYS).set_index(CONTINUATION_KEYS)[["continuation"]]
            every = texts.join(scores).reset_index()
            every["prompt"] = every["prompt_id"].map(prompt_text)
            order = {v: i for i, v in enumerate(study.variants)}
            everything[(probe, protocol)] = every.sort_values(["variant", "subset", "prompt_id", "sample"],
                                                              key=lambda s: s.map(order) if s.name == "variant" else s)
        else:
            everything[(probe, protocol)] = None
            links[(probe, protocol)] = list(paths.values())
    top = pd.concat(top, ignore_index=True) if top else pd.DataFrame(columns=[*INSTANCE_COLUMNS, "variant", "scorer"])
    moved = pd.concat(moved, ignore_index=True) if moved else pd.DataFrame(columns=["comparison"])
    return Instances(top, moved, everything, links, study.threshold, toxicity_scorers)


def _stereotype_tables(paths: list[str] | None) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The gathered stereotype tables (Targets.stereotype_tables: per variant, comparisons), or None when the config
    has no `stereotypes`."""
    if not paths:
        return None
    summary, comparisons = paths
    return tables.read_csv(summary, "stereotypes"), tables.read_csv(comparisons, "stereotype_comparisons")


def _read_if_there(path: str | None, schema: str) -> pd.DataFrame | None:
    """An optional table of the report (one whose stage the config may leave out)."""
    return tables.read_csv(path, schema) if path and Path(path).exists() else None


# --- calibration against human labels (finetox.calibration) ------------------------------------------------------
#: what the calibration reads of a score table: the stratifying scorer's for the export, every scorer's for the fit
EXPORT_COLUMNS = ["prompt_id", "subset", "sample", "continuation", "score"]
FLAG_COLUMNS = ["prompt_id", "sample", "score"]


def calibration_sample(study: Study, score_files: dict[tuple, str], probe_tables: dict[str, str], export: str,
                       design: str, key: str) -> None:
    """The labelling sample: `export` (id, prompt, continuation, blank label: for labellers), `design` (per stratum
    N_h and n_h) and `key` (which continuation each id is). `score_files`: the stratifying scorer's score tables,
    keyed (probe, protocol, scorer, variant)."""
    from finetox import calibration
    from finetox.metrics import keyed_rng

    settings = calibration.settings_of(study)
    others = sorted({scorer for _, _, scorer, _ in score_files} - {settings.scorer})
    if others:
        raise ValueError(f"calibration sample: score tables of {others} given; the sample is drawn from the stratifying "
                         f"scorer's ({settings.scorer!r}) alone")
    frames = []
    for (probe, protocol, _, variant), path in sorted(score_files.items()):
        table = tables.read_parquet(path, "scores", columns=EXPORT_COLUMNS)
        prompts = tables.read_parquet(probe_tables[probe], "probes", columns=["prompt_id", "prompt"])
        table = table.merge(prompts, on="prompt_id", how="left", validate="many_to_one")
        frames.append(table.assign(probe=probe, protocol=protocol, variant=variant))
    sample, strata = calibration.draw_sample(pd.concat(frames, ignore_index=True), settings,
                                             keyed_rng(settings.seed, "calibration-sample"))
    tables.write_parquet(sample, key, "calibration_sample", _provenance(
        study, _upstream_stages(*score_files.values()), scorer=settings.scorer, bands=list(settings.bands)))
    tables.write_csv(strata, design, "calibration_design")
    with tables.atomic_path(export) as tmp:
        calibration.export_table(sample).to_csv(tmp, index=False, quoting=calibration.EXPORT_QUOTING)


def demo_labels(study: Study, export: str, output: str) -> None:
    """The demo labeller's labels of the exported sample (finetox.calibration.demo_labels)."""
    from finetox import calibration

    settings = calibration.settings_of(study)
    exported = pd.read_csv(export, dtype=str, keep_default_na=False)
    labelled = calibration.demo_labels(exported, settings.toxic_labels[0], settings.nontoxic_labels[0])
    with tables.atomic_path(output) as tmp:
        labelled.to_csv(tmp, index=False, quoting=calibration.EXPORT_QUOTING)


def _calibration_context(study: Study, files: list[str]) -> dict:
    """The report's calibration part from the rule's inputs (Targets.calibration_report_inputs): the tables once
    labels are given, else the sample's design."""
    from finetox import calibration

    settings = calibration.settings_of(study)
    if Targets.SCORER_ACCURACY_TABLE in files:
        return calibration.report_context(study, settings, None, tables.read_csv(files[0], "scorer_accuracy"),
                                          tables.read_csv(files[1], "corrected_rates"),
                                          tables.read_csv(files[2], "corrected_comparisons"))
    design = tables.read_csv(Targets.CALIBRATION_DESIGN, "calibration_design") if Targets.CALIBRATION_DESIGN in files else None
    return calibration.report_context(study, settings, design, None, None, None)


def calibrate(study: Study, key: str, labels: str, score_files: dict[tuple, str], accuracy_output: str,
              rates_output: str, comparisons_output: str) -> None:
    """Each calibrated scorer's sensitivity and specificity against the labels, and the misclassification-corrected
    rates and comparisons beside the raw ones (finetox.calibration). `score_files`: every calibrated scorer's score
    tables of the generated variants, keyed (probe, protocol, scorer, variant)."""
    from finetox import calibration, decision, rates
    from finetox.metrics import keyed_rng

    settings = calibration.settings_of(study)
    comps = study.compare_settings
    prob, rope, prior = comps["hdi_prob"], decision.rope_of(comps["rope"]), rates.PRIORS[comps["prior"]]
    sample = tables.read_parquet(key, "calibration_sample")
    truth = calibration.read_labels(labels, sample, settings)
    sample = sample.assign(toxic=truth.reindex(sample["id"]).to_numpy())
    targets = Targets(study)
    scores: dict[tuple, list] = {}
    for (probe, protocol, scorer, variant), path in score_files.items():
        table = tables.read_parquet(path, "scores", columns=FLAG_COLUMNS).assign(variant=variant)
        scores.setdefault((probe, protocol, scorer), []).append(table)
    accuracy, corrected, compared = [], [], []
    for probe, protocol in product(study.run_probes, study.run_protocols):
        here = sample[(sample["probe"] == probe) & (sample["protocol"] == protocol)]
        missing = here[here["toxic"].isna()].groupby("variant").size()
        stratifying = pd.concat(scores[(probe, protocol, settings.scorer)], ignore_index=True)
        variants = [v for v in targets.generated_variants() if study.asks(probe, protocol, v)]
        for scorer in settings.scorers:
            cell = {"scorer": scorer, "probe": probe, "protocol": protocol}
            population = calibration.build_population(
                stratifying, pd.concat(scores[(probe, protocol, scorer)], ignore_index=True), here, settings,
                study.threshold, variants, f"{probe}/{protocol}/{scorer}")
            draws = calibration.posterior_draws(population, settings.draws,
                                                keyed_rng(settings.seed, "calibration", probe, protocol, scorer), prior)
            rows = calibration.accuracy_rows(draws, population, prob, settings.min_youden)
            too_weak = rows[-1]["weak"]  # the pooled row decides for the scorer
            accuracy += [{**cell, **row, "hdi_prob": prob, "missing_labels": int(
                missing.sum() if row["variant"] == "all" else missing.get(row["variant"], 0))} for row in rows]
            corrected += [{**cell, **row} for row in calibration.rate_rows(draws, population, prob, too_weak)]
            compared += [{**cell, **row} for row in calibration.comparison_rows(
                draws, population, targets.comparisons_in(probe, protocol, scorer), prob, rope, too_weak)]
    for rows, schema, output in ((accuracy, "scorer_accuracy", accuracy_output),
                                 (corrected, "corrected_rates", rates_output),
                                 (compared, "corrected_comparisons", comparisons_output)):
        frame = pd.DataFrame(rows, columns=list(tables.SCHEMAS[schema]))
        tables.write_csv(frame, output, schema)
