"""Rule convert_adc_map: glue only, the work is cesynth.adc_maps.convert_adc_map_file and
cesynth.adc_qc.write_qc_row."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import adc_maps, adc_qc  # noqa: E402
from cesynth.jobs import Job, JobOutcome, run_job  # noqa: E402

inputs, params = snakemake.input, snakemake.params


def work():
    subject = snakemake.wildcards.subject
    stats = adc_maps.convert_adc_map_file(
        inputs.adc_map, snakemake.output.adc, who=f"sub-{subject}",
        sidecar_path=inputs.get("adc_sidecar"), min_adc=params.min_adc, max_adc=params.max_adc,
    )
    metrics = adc_qc.write_qc_row(stats, subject, snakemake.output.qc)
    return JobOutcome(metrics=metrics, params={"source": stats.source, "unit": stats.unit})


run_job(Job.of(snakemake), work, params=dict(params.items()))
