"""Rule resample_enhancing_truth_to_model_grid: glue only; the work is
cesynth.enhancement.lesion_truth_to_model_grid."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import enhancement
from cesynth.jobs import Job, run_job


def work():
    truth = enhancement.lesion_truth_to_model_grid(
        snakemake.input.mask, snakemake.output.labels, snakemake.output.sidecar,
        snakemake.params.shape)
    scored = sum(lesion["scored"] for lesion in truth["lesions"])
    return {"lesions": len(truth["lesions"]), "lesions_scored": scored}


run_job(Job.of(snakemake), work, params={"shape": snakemake.params.shape})
