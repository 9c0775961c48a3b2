"""Rule make_demo_subject: glue only, the work is cesynth.phantom.write_subject."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from pathlib import Path  # noqa: E402

from cesynth import phantom  # noqa: E402
from cesynth.jobs import run_job  # noqa: E402

demo = snakemake.params.demo
bids_dir = Path(snakemake.input.participants).parent
participant_id = f"sub-{snakemake.wildcards.subject}"


def work():
    plan = phantom.plan_cohort(demo["subjects"], demo["seed"], demo["set_b_subjects"])
    row = plan.set_index("participant_id").loc[participant_id]
    row["participant_id"] = participant_id
    settings = phantom.PhantomSettings(voxel_mm=demo["voxel_mm"])
    phantom.write_subject(bids_dir, row, settings)
    return {"n_tumors": int(row["n_tumors"]), "set_b": row["set"] == "B"}


run_job(snakemake, work, params=demo)
