"""Rule fit_adc: glue only, the work is cesynth.adc.fit_adc_file."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import adc, qc  # noqa: E402
from cesynth.jobs import run_job  # noqa: E402

inputs, params = snakemake.input, snakemake.params


def work():
    stats = adc.fit_adc_file(
        inputs.dwi, inputs.bval, inputs.bvec, snakemake.output.adc,
        required_b=params.b_values, b_tolerance=params.b_tolerance,
        min_adc=params.min_adc, max_adc=params.max_adc,
    )
    metrics = {"source": "fitted from DWI", "unit_conversion": "none (fitted in mm2/s)",
               **stats.to_dict()}
    if "true_adc" in inputs.keys():
        errors = adc.adc_error_vs_truth(snakemake.output.adc, inputs.true_adc)
        metrics.update({f"truth_{key}": value for key, value in errors.items()})
    qc.write_row(qc.qc_row("adc", snakemake.wildcards.subject, metrics, {}), snakemake.output.qc)
    return metrics


run_job(snakemake, work, params=dict(params.items()))
