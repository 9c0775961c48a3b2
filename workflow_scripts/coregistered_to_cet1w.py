"""Rules coregistered_{anat,adc}_to_cet1w: glue only, the work is cesynth.registration."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import registration  # noqa: E402
from cesynth.jobs import Job, run_job  # noqa: E402

inputs, output, wildcards = snakemake.input, snakemake.output, snakemake.wildcards


def work():
    result = registration.identity_to_reference(
        inputs.fixed, inputs.moving, output.image, output.xfm, who=f"sub-{wildcards.subject}",
    )
    return registration.write_qc_row(
        result, wildcards.subject, wildcards.get("modality", "dwi"), output.qc,
        method=registration.IDENTITY_METHOD,
    )


run_job(Job.of(snakemake), work, params={"declared": snakemake.params.declared})
