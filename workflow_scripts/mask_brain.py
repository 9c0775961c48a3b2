"""Rule mask_brain: glue only, the work is cesynth.brainmask.brain_mask_file (or, for a dataset
declared skull-stripped, cesynth.brainmask.declared_brain_mask_file) and its write_qc_row."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import brainmask  # noqa: E402
from cesynth.jobs import Job, run_job  # noqa: E402

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
    return brainmask.write_qc_row(info, snakemake.wildcards.subject, output.qc,
                                  true_mask_path=inputs.get("true_mask"))


run_job(Job.of(snakemake), work, params={"method": params.method, "reference": params.reference})
