"""Rule tabulate_evaluation: glue only, the work is in cesynth.evaluation_tables."""
import sys
from pathlib import Path

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import evaluation_tables
from cesynth.jobs import Job, JobOutcome, run_job


def work():
    paths = evaluation_tables.tabulate_evaluation(snakemake.input.metrics,
                                                  Path(snakemake.output.metrics).parent,
                                                  dict(snakemake.params.configurations))
    return JobOutcome(metrics={"subject_rows": len(snakemake.input.metrics)},
                      artifacts=list(paths.values()))


run_job(Job.of(snakemake), work)
