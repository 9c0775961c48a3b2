"""Rule resample_enhancing_truth_to_model_grid: glue only; the work is
cesynth.lesion_truth.lesion_truth_to_model_grid."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import lesion_truth
from cesynth.jobs import Job, run_job


def work():
    truth = lesion_truth.lesion_truth_to_model_grid(
        snakemake.input.dseg, snakemake.output.classes, snakemake.output.instances,
        snakemake.output.sidecar, snakemake.params.shape,
        dseg_sidecar_path=snakemake.input.get("dseg_sidecar"),
        agent_path=snakemake.input.get("agent"),
        instances_path=snakemake.input.get("instances"),
        instances_sidecar_path=snakemake.input.get("instances_sidecar"))
    lesions = truth["lesions"]
    return {"lesions": len(lesions), "lesions_scored": sum(item["scored"] for item in lesions),
            "enhancing_lesions": sum(item["enhancing"] for item in lesions)}


run_job(Job.of(snakemake), work, params={"shape": snakemake.params.shape})
