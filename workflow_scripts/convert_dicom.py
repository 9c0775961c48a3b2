"""Rule convert_dicom: glue only, the work is cesynth.dicom.convert_dicom_subject."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import dicom  # noqa: E402
from cesynth.io import write_json  # noqa: E402
from cesynth.jobs import Job, run_job  # noqa: E402

subject = snakemake.wildcards.subject


def work():
    converted = dicom.convert_dicom_subject(
        snakemake.input.dicom, snakemake.params.bids_dir, subject, snakemake.params.patterns
    )
    write_json(converted, snakemake.output.report)
    return {f"has_{name}": True for name in converted.get("modalities", {})}


run_job(Job.of(snakemake), work)
