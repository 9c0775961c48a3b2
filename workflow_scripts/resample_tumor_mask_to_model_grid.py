"""Rule resample_tumor_mask_to_model_grid: glue only; the work is normalise.resample_mask."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import normalise
from cesynth.jobs import Job, run_job


def work():
    voxels = normalise.resample_mask(snakemake.input.mask, snakemake.output.mask,
                                     snakemake.params.shape)
    return {"tumor_voxels": voxels}


run_job(Job.of(snakemake), work, params={"shape": snakemake.params.shape})
