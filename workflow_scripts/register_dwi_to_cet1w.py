"""Rule register_dwi_to_cet1w: glue only, the work is cesynth.registration."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import registration  # noqa: E402
from cesynth.jobs import Job, run_job  # noqa: E402

inputs, output = snakemake.input, snakemake.output


def work():
    if "dwi" in inputs.keys():
        method = "ANTs rigid+affine of the DWI b0, carrying the ADC"
        result = registration.register_dwi_to_reference(
            inputs.fixed, inputs.dwi, inputs.bval, inputs.adc, output.image, output.xfm,
            threads=snakemake.threads, seed=snakemake.params.seed,
        )
    else:  # a given ADC map, no DWI: the map itself is registered
        method = registration.ADC_MAP_METHOD
        result = registration.register_adc_map_to_reference(
            inputs.fixed, inputs.adc, output.image, output.xfm,
            threads=snakemake.threads, seed=snakemake.params.seed,
        )
    return registration.write_qc_row(
        result, snakemake.wildcards.subject, "dwi", output.qc,
        truth_json=inputs.get("true_transforms"), truth_mask=inputs.get("true_mask"),
        method=method,
    )


run_job(Job.of(snakemake), work, params={"seed": snakemake.params.seed})
