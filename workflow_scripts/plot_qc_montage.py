"""Rule plot_qc_montage: glue only, the work is cesynth.qc.montage_png."""
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../src")

from cesynth import qc  # noqa: E402
from cesynth.jobs import Job, JobOutcome, run_job  # noqa: E402

inputs = snakemake.input
LABELS = {"T1w": "T1w", "T2w": "T2w", "FLAIR": "FLAIR", "adc": "ADC"}


def work():
    images = {label: inputs[key] for key, label in LABELS.items() if key in inputs.keys()}
    qc.montage_png(inputs.ceT1w, images, inputs.mask, snakemake.output.png,
                   title=f"sub-{snakemake.wildcards.subject}")
    return JobOutcome(artifacts=[snakemake.output.png])


run_job(Job.of(snakemake), work)
