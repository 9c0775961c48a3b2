"""Rule convert_dicom: glue only, the work is cesynth.dicom.convert_dicom_subject."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import dicom  # noqa: E402
from cesynth.io import write_json  # noqa: E402
from cesynth.jobs import Job, run_job  # noqa: E402

subject = snakemake.wildcards.subject


def work():
    params = snakemake.params
    options = dicom.RoleOptions(
        prefer=params.prefer, b_values=tuple(float(b) for b in params.b_values),
        b_tolerance=float(params.b_tolerance), overrides=dict(params.overrides),
    )
    converted = dicom.convert_dicom_subject(
        snakemake.input.dicom, params.bids_dir, subject, params.patterns, options=options,
        series_table=snakemake.output.series,
    )
    write_json(converted, snakemake.output.report)
    return {f"has_{name}": True for name in converted.get("modalities", {})}


run_job(Job.of(snakemake), work)
