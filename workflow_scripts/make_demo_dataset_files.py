"""Rule make_demo_dataset_files: glue only, the work is cesynth.phantom.write_dataset_files."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from pathlib import Path  # noqa: E402

from cesynth import phantom, splits  # noqa: E402
from cesynth.jobs import Job, run_job  # noqa: E402

demo = snakemake.params.demo
bids_dir = Path(snakemake.output.participants).parent


def work():
    # The same plan as rules/common.smk's get_demo_plan (fractions included).
    plan = phantom.plan_cohort(demo["subjects"], demo["seed"], demo["set_b_subjects"],
                               fractions=splits.SplitFractions.from_config(snakemake.params.sets))
    phantom.guard_demo_target(bids_dir)
    phantom.write_dataset_files(bids_dir, plan, phantom.PhantomSettings(voxel_mm=demo["voxel_mm"]),
                                flair=demo["flair"])
    return {"subjects": len(plan), "set_b_subjects": int((plan["set"] == "B").sum())}


run_job(Job.of(snakemake), work, params=demo)
