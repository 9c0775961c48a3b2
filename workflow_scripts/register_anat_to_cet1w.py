"""Rule register_anat_to_cet1w: glue only, the work is cesynth.registration."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import registration  # noqa: E402
from cesynth.jobs import Job, run_job  # noqa: E402

inputs, output = snakemake.input, snakemake.output


def work():
    result = registration.register_to_reference(
        inputs.fixed, inputs.moving, output.image, output.xfm,
        threads=snakemake.threads, seed=snakemake.params.seed,
    )
    return registration.write_qc_row(
        result, snakemake.wildcards.subject, snakemake.wildcards.modality, output.qc,
        truth_json=inputs.get("true_transforms"), truth_mask=inputs.get("true_mask"),
        method="ANTs rigid+affine",
    )


run_job(Job.of(snakemake), work, params={"seed": snakemake.params.seed})
