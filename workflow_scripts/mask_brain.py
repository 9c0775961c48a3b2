"""Rule mask_brain: glue only, the work is cesynth.brainmask.brain_mask_file."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import brainmask, qc  # noqa: E402
from cesynth.jobs import run_job  # noqa: E402

inputs, output, params = snakemake.input, snakemake.output, snakemake.params


def work():
    info = brainmask.brain_mask_file(
        inputs.image, output.mask, params.method, threads=snakemake.threads,
        reference=params.reference, sidecar_path=output.sidecar,
    )
    metrics = {"method": info["method"], "reference": info["reference"],
               "volume_ml": info["volume_ml"], "seconds": info["seconds"]}
    if "true_mask" in inputs.keys():
        metrics["truth_dice"] = brainmask.dice_files(output.mask, inputs.true_mask)
    flags = qc.plausibility_flags(brain_volume_ml=info["volume_ml"])
    qc.write_row(qc.qc_row("brainmask", snakemake.wildcards.subject, metrics, flags), output.qc)
    return {**metrics, **flags}


run_job(snakemake, work, params={"method": params.method, "reference": params.reference})
