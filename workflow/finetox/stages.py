"""One function per workflow stage: read its inputs, call the logic, write its outputs with provenance.

The scripts under workflow/scripts are thin adapters from Snakemake's `snakemake` object to these.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path

import pandas as pd

from finetox import tables
from finetox.config import Study, config_hash
from finetox.metrics import toxicity_metrics


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
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)


def _provenance(study: Study, **details) -> dict:
    return {"config_hash": config_hash(study.raw), "seed": study.seed, **details}


def _publish_directory(build: Path, target: Path) -> None:
    """Move a finished directory into place: a failed job leaves no half-written directory behind."""
    if target.exists():
        shutil.rmtree(target)
    build.rename(target)


def demo_models(study: Study, corpus: str, instructions: str, base_dir: str, instruct_dir: str, loss_csv: str) -> None:
    from finetox.demo import build_demo_models

    base, instruct = Path(base_dir), Path(instruct_dir)
    scratch = [p.with_name(f".{p.name}.building") for p in (base, instruct)]
    for path in scratch:
        shutil.rmtree(path, ignore_errors=True)
    losses = build_demo_models(Path(corpus), Path(instructions), scratch[0], scratch[1], seed=study.seed)
    for build, target in zip(scratch, (base, instruct)):
        _publish_directory(build, target)
    losses.to_csv(loss_csv, index=False)


def finetune(study: Study, variant_name: str, adapter_dir: str, loss_csv: str) -> None:
    from finetox.data import load_instructions
    from finetox.finetune import finetune as train_adapter
    from finetox.tables import package_versions

    variant = study.variants[variant_name]
    recipe = variant.recipe
    examples = load_instructions(recipe.dataset, recipe.max_examples, recipe.training.seed)
    target = Path(adapter_dir)
    build = target.with_name(f".{target.name}.building")
    shutil.rmtree(build, ignore_errors=True)
    history = train_adapter(variant.model, recipe, examples, build)
    (build / "finetox.json").write_text(json.dumps(
        _provenance(study, variant=variant_name, recipe=study.raw["recipes"][recipe.name],
                    examples=len(examples), versions=package_versions()),
        indent=1, default=str,
    ))
    _publish_directory(build, target)
    history.assign(variant=variant_name).to_csv(loss_csv, index=False)


def generate(study: Study, variant_name: str, probe: str, protocol_name: str, output: str,
             adapter: str | None = None) -> None:
    from finetox.data import load_probes
    from finetox.generation import BACKENDS, generate_continuations

    variant = study.variants[variant_name]
    protocol = study.protocols[protocol_name]
    seed = variant.seed if variant.seed is not None else protocol.seed
    prompt_format = variant.prompt_format or protocol.prompt_format
    probes = load_probes(study.probes[probe], study.seed)
    settings = {**study.generation, "seed": seed}
    with BACKENDS[study.generation["backend"]](variant.model, adapter, settings) as backend:
        table = generate_continuations(probes, variant_name, protocol, prompt_format, seed, backend)
    tables.write_parquet(table, output, "generations", _provenance(
        study, variant=variant_name, probe=probe, protocol=protocol_name, generation_seed=seed,
        variant_settings=study.variant_hash(variant_name),
    ))


def score(study: Study, scorer_name: str, generations: str, output: str) -> None:
    from finetox.scoring import build_scorer, score_table

    spec = study.scorers[scorer_name]
    table = tables.read_parquet(generations, "generations")
    scored = score_table(table, build_scorer(spec.type, spec.options), scorer_name)
    tables.write_parquet(scored, output, "scores", _provenance(
        study, scorer=scorer_name, scorer_settings=spec.options, generations=generations,
    ))


def metrics(study: Study, probe: str, protocol: str, scorer: str, scores: str, output: str) -> None:
    table = tables.read_parquet(scores, "scores")
    tables.write_csv(toxicity_metrics(table, probe, protocol, scorer, study.threshold), output, "toxicity")


def compare(study: Study, comparison: str, probe: str, protocol: str, scorer: str, metric_files: list[str],
            output: str, posterior: str, cores: int = 1) -> None:
    from finetox.compare import FitSettings
    from finetox.compare import compare as compare_pair

    settings = study.compare_settings
    counts = pd.concat([tables.read_csv(path, "toxicity") for path in metric_files], ignore_index=True)
    fit = FitSettings(
        hdi_prob=settings["hdi_prob"], prior_sigma=settings["prior_sigma"], draws=settings["draws"],
        tune=settings["tune"], chains=settings["chains"], seed=study.seed, cores=cores,
    )
    rows, idata = compare_pair(counts, study.comparisons[comparison], fit)
    Path(posterior).parent.mkdir(parents=True, exist_ok=True)
    idata.to_netcdf(posterior)
    tables.write_csv(rows.assign(probe=probe, protocol=protocol, scorer=scorer), output, "comparisons")


def gather(files: list[str], schema: str, output: str) -> None:
    """Concatenate per-job tables into one (results/tables/*.csv)."""
    frames = [tables.read_csv(path, schema) for path in files]
    combined = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(tables.SCHEMAS[schema]))
    tables.write_csv(combined, output, schema)


def report(study: Study, toxicity: str, comparisons: str, training_logs: list[str], output: str) -> None:
    from finetox.report import build_report

    training = pd.concat([pd.read_csv(path) for path in training_logs], ignore_index=True) if training_logs else pd.DataFrame()
    html = build_report(study, tables.read_csv(toxicity, "toxicity"), tables.read_csv(comparisons, "comparisons"), training)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(html)
