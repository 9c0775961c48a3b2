"""Rule make_demo_subject: glue only, the work is cesynth.phantom.write_subject."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import phantom  # noqa: E402
from cesynth.jobs import run_job  # noqa: E402

params = snakemake.params
plan_row = {**params.plan, "participant_id": f"sub-{snakemake.wildcards.subject}"}


def work():
    phantom.write_subject(params.bids_dir, plan_row, phantom.PhantomSettings(voxel_mm=params.voxel_mm))
    return {"n_tumors": int(plan_row["n_tumors"]), "set_b": plan_row["set"] == "B"}


run_job(snakemake, work, params={**plan_row, "voxel_mm": params.voxel_mm})
