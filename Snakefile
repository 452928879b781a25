# locatlas: raw microscope images -> protein-localization atlas.
# The logic lives in the `locatlas` package; every rule is a thin call of its CLI.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/normalize.smk"
include: "workflow/rules/clear.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/localize.smk"
include: "workflow/rules/aggregate.smk"


rule all:
    default_target: True
    input:
        atlas_targets(),
