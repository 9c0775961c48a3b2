"""Rule fit_voxel_regression: glue only, the work is cesynth.baselines.fit_voxel_regression."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import baselines
from cesynth.jobs import Job, run_job


def work():
    model = baselines.fit_voxel_regression(snakemake.params.subjects, snakemake.output.model)
    return {key: value for key, value in model.items() if isinstance(value, int | float)}


run_job(Job.of(snakemake), work)
