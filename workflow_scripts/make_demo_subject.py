"""Rule make_demo_subject: glue only, the work is cesynth.phantom.write_subject."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from pathlib import Path

from cesynth import phantom  # noqa: E402
from cesynth.jobs import Job, run_job  # noqa: E402

params = snakemake.params
bids_dir = Path(snakemake.output.t1w).parents[2]  # <bids>/sub-XX/anat/sub-XX_T1w.nii.gz
plan_row = {**params.plan, "participant_id": f"sub-{snakemake.wildcards.subject}"}
writes_flair = "flair" in snakemake.output.keys()  # the rule declares it only when written


def work():
    settings = phantom.PhantomSettings(voxel_mm=params.voxel_mm)
    phantom.write_subject(bids_dir, plan_row, settings, flair=writes_flair)
    return {"n_tumors": int(plan_row["n_tumors"]), "lesion_types": plan_row["lesion_types"],
            "set_b": plan_row["set"] == "B", "flair": writes_flair}


run_job(Job.of(snakemake), work, params={**plan_row, "voxel_mm": params.voxel_mm})
