"""Rule resample_mask_to_model_grid: glue only, the work is cesynth.normalise.prepare_mask."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import normalise  # noqa: E402
from cesynth.jobs import Job, run_job  # noqa: E402


def work():
    sidecar = normalise.prepare_mask(
        snakemake.input.mask, snakemake.output.mask, snakemake.params.shape,
        sidecar_path=snakemake.output.sidecar,
    )
    first, last = sidecar["foreground_slices"]
    return {"first_foreground_slice": first, "last_foreground_slice": last}


run_job(Job.of(snakemake), work, params={"shape": snakemake.params.shape})
