"""Rule plot_lesion_panels: glue only, the work is cesynth.lesion_panels.lesion_panels."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import lesion_panels
from cesynth.jobs import Job, JobOutcome, run_job


def work():
    subjects = {f"sub-{s}": panels for s, panels in snakemake.params.panels.items()}
    lesion_panels.lesion_panels(subjects, snakemake.params.models, snakemake.output.panel)
    return JobOutcome(artifacts=[snakemake.output.panel])


run_job(Job.of(snakemake), work)
