"""Rule plot_lesion_sensitivity: glue only, the work is cesynth.lesion_figure."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import lesion_figure
from cesynth.jobs import Job, JobOutcome, run_job


def work():
    lesion_figure.plot_lesion_sensitivity(snakemake.input.by_size, snakemake.output.figure)
    return JobOutcome(artifacts=[snakemake.output.figure])


run_job(Job.of(snakemake), work)
