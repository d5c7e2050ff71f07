from snakemake.utils import min_version

min_version("9.0")


# The demo config is the default. A config given with --configfile replaces it rather than merging
# into it, so a real study never inherits the demo's models.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/merge.smk"
include: "workflow/rules/capability.smk"
include: "workflow/rules/stereotypes.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/select.smk"
include: "workflow/rules/mistakes.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/metrics.smk"
include: "workflow/rules/degeneration.smk"
include: "workflow/rules/compare.smk"
include: "workflow/rules/agreement.smk"
include: "workflow/rules/calibration.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/prefetch.smk"


rule all:
    default_target: True
    input:
        get_final_output(),
