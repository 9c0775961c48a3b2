"""Rule tabulate_validation: glue only, the work is in cesynth.validation_scores."""
import sys
from pathlib import Path

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import validation_scores
from cesynth.jobs import Job, JobOutcome, run_job


def work():
    paths = validation_scores.tabulate_validation(snakemake.input.metrics,
                                                  Path(snakemake.output.summary).parent)
    return JobOutcome(metrics={"subject_rows": len(snakemake.input.metrics)},
                      artifacts=list(paths.values()))


run_job(Job.of(snakemake), work)
