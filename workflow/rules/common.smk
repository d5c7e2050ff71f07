import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))

from finetox.config import load as load_study
from finetox.workflow import Targets

# Validates the config (schema and cross-references) before any job is planned.
STUDY = load_study(config)
TARGETS = Targets(STUDY)


wildcard_constraints:
    variant="|".join(map(re.escape, STUDY.variants)),
    probe="|".join(map(re.escape, STUDY.probes)),
    protocol="|".join(map(re.escape, STUDY.protocols)),
    scorer="|".join(map(re.escape, STUDY.scorers)),
    comparison="|".join(map(re.escape, STUDY.comparisons)) or "no-comparison",


def get_final_output():
    return TARGETS.final()


def threads_for(stage):
    return STUDY.resources(stage)["threads"]


def resources_for(stage):
    """mem_mb, runtime (minutes) and gpu for a stage, from the config's `resources` section."""
    requested = STUDY.resources(stage)
    return {key: requested[key] for key in ("mem_mb", "runtime", "gpu")}


def generation_inputs(wildcards):
    """The checkpoint (when it is a local directory a rule builds) and the adapter a variant needs."""
    return TARGETS.generation_inputs(wildcards.variant)


# Gathering tables is cheap: on a cluster it runs on the submitting node, not as a job.
localrules:
    toxicity_table,
    comparisons_table,
