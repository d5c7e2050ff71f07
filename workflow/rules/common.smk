import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))

from finetox.config import load as load_study, read_config_file
from finetox.hub import preflight
from finetox.paths import Targets, alternatives

# Validates the config (schema and cross-references) before any job is planned; Snakemake's YAML reader
# keeps the last of two equal keys, so its files are read again, strictly.
for configfile_path in workflow.configfiles:
    read_config_file(configfile_path)
STUDY = load_study(config)
TARGETS = Targets(STUDY)
# A probe set that can be read here is selected now (counted once, remembered): a filter on a missing
# column or overlapping subsets stop the run before any job, naming the file and the column.
for probe in STUDY.generated_probes:
    TARGETS.planned_prompts(probe)


wildcard_constraints:
    variant="|".join(map(re.escape, STUDY.variants)),
    probe="|".join(map(re.escape, STUDY.probes)),
    protocol="|".join(map(re.escape, STUDY.protocols)),
    scorer="|".join(map(re.escape, STUDY.scorers)),
    group="|".join(map(re.escape, TARGETS.groups)),
    shard=r"\d+",


def calibration_hash(part):
    """A calibration rule's rerun trigger ("" without `calibration`): the sample's settings (`sample`), the
    estimate's (`estimate`) or the label values (`labels`)."""
    from finetox.calibration import estimate_hash
    from finetox.config import config_hash

    settings = TARGETS.calibration
    if settings is None:
        return ""
    if part == "sample":
        return settings.sample_hash()
    if part == "labels":
        return config_hash([settings.toxic_labels, settings.nontoxic_labels])
    return estimate_hash(STUDY, settings)


def get_final_output():
    return TARGETS.final()


def threads_for(stage, model_of=None):
    """A stage's threads, from the config (and the model of the job, where `model_of` finds it)."""
    return lambda wildcards: STUDY.resources(
        stage, model_of(wildcards) if model_of else None
    )["threads"]


def resources_for(stage, model_of=None):
    """mem_mb, runtime (minutes) and gpu of a stage's jobs; see Study.resources."""

    def request(key):
        def get(wildcards, attempt):
            model = model_of(wildcards) if model_of else None
            return STUDY.resources(stage, model, attempt)[key]

        return get

    return {key: request(key) for key in ("mem_mb", "runtime", "gpu")}


def model_of_group(wildcards):
    return STUDY.variants[TARGETS.members(wildcards.group)[0]].model.name


def model_of_variant(wildcards):
    return STUDY.variants[wildcards.variant].model.name


def prompt_counts(probes):
    """Each probe set's number of prompts: from its source where it can be read here (so dry runs list every
    generation job), else from the probes checkpoint once it ran."""
    import pyarrow.parquet as pq

    counts = {}
    for probe in probes:
        counts[probe] = TARGETS.planned_prompts(probe)
        if counts[probe] is None:
            table = checkpoints.probes.get(probe=probe).output[0]
            counts[probe] = pq.read_metadata(table).num_rows
    return counts


def shard_dirs(wildcards):
    """The generate jobs' outputs that hold part of a variant's continuations of a probe set x protocol."""
    cell = (wildcards.probe, wildcards.protocol, wildcards.variant)
    # (only the probe sets of the cell's own generation job: a prompt set produced from another job's answers
    # is not waited for)
    return TARGETS.shards(
        *cell, prompt_counts(TARGETS.group_probes(TARGETS.group_of[cell]))
    )


onstart:
    # Offline (HF_HUB_OFFLINE=1), a model or dataset missing from the cache fails the run here,
    # before any (GPU) job is submitted, naming it and the command that fetches it.
    preflight(STUDY, workflow.overwrite_configfiles)


# Gathering tables is cheap: on a cluster it runs on the submitting node, not as a job.
localrules:
    toxicity_table,
    comparisons_table,
    pooled_table,
    threshold_table,
    degeneration_table,
    capability_table,
    stereotypes_table,
    merge_generations,
    merge_candidates,
    selection_table,
    prefetch,
    calibration_sample,
    demo_labels,
    calibrate,
