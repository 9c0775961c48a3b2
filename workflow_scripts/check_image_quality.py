"""Rule check_image_quality: glue only, the work is cesynth.image_qc (measure_image,
write_qc_row)."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import image_qc  # noqa: E402
from cesynth.jobs import Job, run_job  # noqa: E402


def work():
    metrics = image_qc.measure_image(snakemake.input.stored, snakemake.input.image,
                                     snakemake.input.mask)
    return image_qc.write_qc_row(metrics, snakemake.wildcards.modality,
                                 snakemake.wildcards.subject, snakemake.output.qc)


run_job(Job.of(snakemake), work)
