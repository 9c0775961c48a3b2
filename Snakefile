# cesynth: raw brain MRI -> ADC, co-registration, brain masks, model-grid volumes -> CE-T1
# synthesis -> evaluation on the held-out Set A and Set B -> release to the MLflow registry.
# This file is the table of contents; each stage lives in rules/<stage>.smk.
import os

from snakemake.utils import min_version

min_version("9.17")  # 9.10-9.16 start a lone ready job without reserving its threads


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/phantom.smk"
include: "rules/import.smk"
include: "rules/ingest.smk"
include: "rules/adc.smk"
include: "rules/brainmask.smk"
include: "rules/registration.smk"
include: "rules/normalise.smk"
include: "rules/qc.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/release.smk"


# Seconds-long bookkeeping runs beside the scheduler, not as a cluster job of its own.
localrules:
    make_demo_dataset_files,
    assign_sets,
    tabulate_qc,
    tabulate_evaluation,
    tabulate_validation,
    tabulate_paper,


rule all:
    """Every output of the stages that exist, for every subject that exists."""
    default_target: True
    input:
        get_final_targets(),


rule study:
    """The phantom reproduction study's tables and figures (config/profiles/study.yaml)."""
    input:
        get_study_targets(),
