"""Rule fit_adc: glue only, the work is cesynth.adc.fit_adc_file and cesynth.adc_qc.write_qc_row."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import adc, adc_qc  # noqa: E402
from cesynth.jobs import Job, run_job  # noqa: E402

inputs, params = snakemake.input, snakemake.params


def work():
    stats = adc.fit_adc_file(
        inputs.dwi, inputs.bval, inputs.bvec, snakemake.output.adc,
        required_b=params.b_values, b_tolerance=params.b_tolerance,
        accept_b=params.required_b_values,
        min_adc=params.min_adc, max_adc=params.max_adc,
    )
    return adc_qc.write_qc_row(
        stats, snakemake.wildcards.subject, snakemake.output.qc,
        adc_path=snakemake.output.adc, true_adc_path=inputs.get("true_adc"),
    )


run_job(Job.of(snakemake), work, params=dict(params.items()))
