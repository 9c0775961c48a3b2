"""Rule mask_brain: glue only, the work is cesynth.brainmask.brain_mask_file (or, for a dataset
declared skull-stripped, cesynth.brainmask.declared_brain_mask_file)."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import brainmask, qc  # noqa: E402
from cesynth.jobs import run_job  # noqa: E402

inputs, output, params = snakemake.input, snakemake.output, snakemake.params


def work():
    if params.method in brainmask.DECLARED_METHODS:
        info = brainmask.declared_brain_mask_file(
            inputs.image, output.mask, provided_path=inputs.get("provided_mask"),
            reference=params.reference, sidecar_path=output.sidecar,
        )
    else:
        info = brainmask.brain_mask_file(
            inputs.image, output.mask, params.method, threads=snakemake.threads,
            reference=params.reference, sidecar_path=output.sidecar,
        )
    metrics = {"method": info["method"], "reference": info["reference"],
               "volume_ml": info["volume_ml"], "seconds": info["seconds"]}
    if "source" in info:
        metrics["source"] = info["source"]
    if "true_mask" in inputs.keys():
        metrics["truth_dice"] = brainmask.dice_files(output.mask, inputs.true_mask)
    flags = qc.plausibility_flags(brain_volume_ml=info["volume_ml"])
    qc.write_row(qc.qc_row("brainmask", snakemake.wildcards.subject, metrics, flags), output.qc)
    return {**metrics, **flags}


run_job(snakemake, work, params={"method": params.method, "reference": params.reference})
